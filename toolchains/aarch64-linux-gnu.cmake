# aarch64 (arm64) cross build against Debian's multiarch :arm64 libraries.
# Installed by `scripts/deps --target aarch64`.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

# Multiarch libraries live in /usr/lib/aarch64-linux-gnu and their headers in
# /usr/include, so "/" must be a find root next to the cross prefix.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")

# The arm64 loader and libc come from libc6:arm64 under "/". Using the cross
# package's prefix instead mixes two libcs and makes pthread_create spin.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/)
