// SHA-256 for artifact verification (runtime/tcc_verify.h). Three block functions behind one driver:
// the x86 SHA extensions and the Armv8 SHA2 instructions where the CPU has them (about 1.5 GB/s, so a
// 7B model's weights verify in a few seconds), and a portable one elsewhere (about 0.3 GB/s).
#include "tcc_verify.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tcc_runtime.h"

#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#include <sys/auxv.h>
#ifndef HWCAP_SHA2
#define HWCAP_SHA2 (1 << 6)
#endif
#endif

namespace tcc {
namespace {

alignas(16) const uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

void blocks_portable(uint32_t s[8], const uint8_t* p, size_t n) {
  for (; n; --n, p += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 | uint32_t(p[4 * i + 2]) << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + kK[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s[0] += a; s[1] += b; s[2] += c; s[3] += d; s[4] += e; s[5] += f; s[6] += g; s[7] += h;
  }
}

#if defined(__x86_64__)
// The SHA extensions keep the state as (A,B,E,F) and (C,D,G,H) and run two rounds per sha256rnds2.
__attribute__((target("sha,sse4.1,ssse3"))) void blocks_shani(uint32_t s[8], const uint8_t* p, size_t n) {
  const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
  __m128i t = _mm_shuffle_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)), 0xB1);     // CDAB
  __m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 4)), 0x1B);  // EFGH
  __m128i s0 = _mm_alignr_epi8(t, s1, 8);      // ABEF
  s1 = _mm_blend_epi16(s1, t, 0xF0);           // CDGH
  for (; n; --n, p += 64) {
    const __m128i save0 = s0, save1 = s1;
    __m128i w[4];
    for (int g = 0; g < 16; ++g) {  // four rounds per group; w[] rings over the last 16 schedule words
      if (g < 4) {
        w[g] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * g)), bswap);
      } else {
        __m128i x = _mm_sha256msg1_epu32(w[g & 3], w[(g + 1) & 3]);
        x = _mm_add_epi32(x, _mm_alignr_epi8(w[(g + 3) & 3], w[(g + 2) & 3], 4));
        w[g & 3] = _mm_sha256msg2_epu32(x, w[(g + 3) & 3]);
      }
      __m128i m = _mm_add_epi32(w[g & 3], _mm_load_si128(reinterpret_cast<const __m128i*>(kK + 4 * g)));
      s1 = _mm_sha256rnds2_epu32(s1, s0, m);
      s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(m, 0x0E));
    }
    s0 = _mm_add_epi32(s0, save0);
    s1 = _mm_add_epi32(s1, save1);
  }
  t = _mm_shuffle_epi32(s0, 0x1B);             // FEBA
  s1 = _mm_shuffle_epi32(s1, 0xB1);            // DCHG
  s0 = _mm_blend_epi16(t, s1, 0xF0);           // DCBA
  s1 = _mm_alignr_epi8(s1, t, 8);              // HGFE
  _mm_storeu_si128(reinterpret_cast<__m128i*>(s), s0);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(s + 4), s1);
}

bool have_shani() { return __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1"); }
#elif defined(__aarch64__)
__attribute__((target("+crypto"))) void blocks_armv8(uint32_t s[8], const uint8_t* p, size_t n) {
  uint32x4_t abcd = vld1q_u32(s), efgh = vld1q_u32(s + 4);
  for (; n; --n, p += 64) {
    const uint32x4_t save0 = abcd, save1 = efgh;
    uint32x4_t w[4];
    for (int g = 0; g < 16; ++g) {
      if (g < 4)
        w[g] = vreinterpretq_u32_u8(vrev32q_u8(vld1q_u8(p + 16 * g)));
      else
        w[g & 3] = vsha256su1q_u32(vsha256su0q_u32(w[g & 3], w[(g + 1) & 3]), w[(g + 2) & 3], w[(g + 3) & 3]);
      const uint32x4_t m = vaddq_u32(w[g & 3], vld1q_u32(kK + 4 * g));
      const uint32x4_t prev = abcd;
      abcd = vsha256hq_u32(abcd, efgh, m);
      efgh = vsha256h2q_u32(efgh, prev, m);
    }
    abcd = vaddq_u32(abcd, save0);
    efgh = vaddq_u32(efgh, save1);
  }
  vst1q_u32(s, abcd);
  vst1q_u32(s + 4, efgh);
}

bool have_armv8_sha2() { return (getauxval(AT_HWCAP) & HWCAP_SHA2) != 0; }
#endif

using BlockFn = void (*)(uint32_t*, const uint8_t*, size_t);

BlockFn pick_blocks() {
#if defined(TCC_SHA256_PORTABLE)  // tests build the portable path on hosts that have the instructions
  return blocks_portable;
#elif defined(__x86_64__)
  if (have_shani()) return blocks_shani;
#elif defined(__aarch64__)
  if (have_armv8_sha2()) return blocks_armv8;
#endif
  return blocks_portable;
}

class Sha256 {
 public:
  void update(const uint8_t* p, size_t n) {
    total_ += n;
    if (fill_) {
      size_t take = n < 64 - fill_ ? n : 64 - fill_;
      std::memcpy(buf_ + fill_, p, take);
      fill_ += take, p += take, n -= take;
      if (fill_ < 64) return;
      blocks_(s_, buf_, 1);
      fill_ = 0;
    }
    blocks_(s_, p, n / 64);
    p += n / 64 * 64;
    fill_ = n % 64;
    std::memcpy(buf_, p, fill_);
  }
  std::string hex() {
    uint64_t bits = total_ * 8;
    uint8_t pad[72] = {0x80};
    size_t padn = (fill_ < 56 ? 56 : 120) - fill_;
    for (int i = 0; i < 8; ++i) pad[padn + i] = uint8_t(bits >> (56 - 8 * i));
    update(pad, padn + 8);
    static const char digits[] = "0123456789abcdef";
    std::string out(64, '0');
    for (int i = 0; i < 32; ++i) {
      const uint8_t b = uint8_t(s_[i / 4] >> (24 - 8 * (i % 4)));
      out[2 * i] = digits[b >> 4];
      out[2 * i + 1] = digits[b & 15];
    }
    return out;
  }

 private:
  BlockFn blocks_ = pick_blocks();
  uint32_t s_[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t buf_[64] = {};
  size_t fill_ = 0;
  uint64_t total_ = 0;
};

std::string errno_text(int err) { return std::string(std::strerror(err)); }

}  // namespace

std::string sha256_hex(const void* data, size_t n) {
  Sha256 h;
  h.update(static_cast<const uint8_t*>(data), n);
  return h.hex();
}

std::string sha256_file_hex(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error("cannot open " + path + ": " + errno_text(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + " is not a regular file");
  }
  Sha256 h;
  std::vector<uint8_t> buf(size_t(4) << 20);
  for (;;) {
    ssize_t got = ::read(fd, buf.data(), buf.size());
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      int err = errno;
      ::close(fd);
      throw Error("cannot read " + path + ": " + errno_text(err));
    }
    if (got == 0) break;
    h.update(buf.data(), size_t(got));
  }
  ::close(fd);
  return h.hex();
}

void verify_file(const std::string& path, int64_t bytes, const std::string& expected) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw Error("cannot open " + path + ": " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) throw Error(path + " is not a regular file");
  if (int64_t(st.st_size) != bytes)
    throw Error(path + " has " + std::to_string(int64_t(st.st_size)) + " bytes, the model was compiled with " +
                std::to_string(bytes) + " (truncated or replaced: recompile the model)");
  if (sha256_file_hex(path) != expected)
    throw Error(path + " is damaged: its SHA-256 differs from the one the model was compiled with (recompile the "
                "model, or copy the artifact again)");
}

}  // namespace tcc

extern "C" int tcc_sha256_file(const char* path, char* out_hex) {
  try {
    const std::string hex = tcc::sha256_file_hex(path);
    std::memcpy(out_hex, hex.c_str(), 65);
    return 0;
  } catch (const std::exception&) {
    return 1;
  }
}
