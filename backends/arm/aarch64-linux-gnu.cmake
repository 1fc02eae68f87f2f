# CMake toolchain file: cross-compile tcc artifacts for aarch64 Linux from another host (Debian's
# g++-aarch64-linux-gnu). Used by codegen/cmake.py when the arm target is built off an aarch64 host.
# Executables built here run under qemu-aarch64 (CMAKE_CROSSCOMPILING_EMULATOR, e.g. for ctest).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

if(NOT CMAKE_CXX_COMPILER)
  set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
endif()

set(TCC_AARCH64_SYSROOT /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH ${TCC_AARCH64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

find_program(TCC_QEMU_AARCH64 qemu-aarch64)
if(TCC_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${TCC_QEMU_AARCH64};-L;${TCC_AARCH64_SYSROOT}")
endif()
