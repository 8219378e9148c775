# CMake toolchain file: cross compile for linux-aarch64 (glibc) with Debian's
# g++-aarch64-linux-gnu. Run the results with qemu-user:
#   qemu-aarch64 -L /usr/aarch64-linux-gnu ./program
# Usage:
#   cmake -S custom_ops -B build-aarch64 \
#         -DCMAKE_TOOLCHAIN_FILE=custom_ops/cmake/aarch64-linux-gnu.cmake
# Override the compiler prefix with -DMBQ_CROSS_PREFIX=... (e.g. a versioned triplet).

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(MBQ_CROSS_PREFIX "aarch64-linux-gnu-" CACHE STRING "Cross compiler prefix")
set(CMAKE_C_COMPILER "${MBQ_CROSS_PREFIX}gcc")
set(CMAKE_CXX_COMPILER "${MBQ_CROSS_PREFIX}g++")

set(MBQ_CROSS_SYSROOT "/usr/aarch64-linux-gnu" CACHE PATH "Target root (libc, libstdc++) for qemu -L")
set(CMAKE_FIND_ROOT_PATH "${MBQ_CROSS_SYSROOT}")
# Programs come from the host; libraries and headers from the target root (the ORT SDK is
# passed by absolute path, so it is found regardless).
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Lets tests run cross-built programs (e.g. ctest) through qemu.
set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-aarch64;-L;${MBQ_CROSS_SYSROOT}")
