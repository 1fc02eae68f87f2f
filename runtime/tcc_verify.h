// Verifying an artifact's files from C++ (the standalone run and chat binaries): size and SHA-256 of the
// weights against what the compiler recorded, before they are mapped. Part of libtcc_runtime.a.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace tcc {

// SHA-256 as 64 lowercase hex digits. The file is read (not mapped), so a file truncated under us is an
// error, not a SIGBUS. Throws tcc::Error naming the file.
std::string sha256_hex(const void* data, size_t n);
std::string sha256_file_hex(const std::string& path);

// The file must have `bytes` bytes and the SHA-256 `sha256_hex`; throws tcc::Error naming the file.
void verify_file(const std::string& path, int64_t bytes, const std::string& sha256_hex);

}  // namespace tcc

extern "C" {
// For tests and other languages: writes the hex digest and a NUL into out_hex[65]; 0 on success.
int tcc_sha256_file(const char* path, char* out_hex);
}
