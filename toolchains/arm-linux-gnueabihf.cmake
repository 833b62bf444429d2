# armhf (32-bit ARMv7, hard float) cross build. The third-party libraries come
# from a private sysroot that `scripts/deps --target armhf` unpacks into
# .deps/armhf; libc and libstdc++ come from the cross compiler's own prefix.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(CMAKE_C_COMPILER arm-linux-gnueabihf-gcc)
set(CMAKE_CXX_COMPILER arm-linux-gnueabihf-g++)
set(CMAKE_LIBRARY_ARCHITECTURE arm-linux-gnueabihf)

get_filename_component(WS_ARMHF_SYSROOT "${CMAKE_CURRENT_LIST_DIR}/../.deps/armhf" ABSOLUTE)
if(NOT EXISTS "${WS_ARMHF_SYSROOT}/usr/include/sqlite3.h")
  message(FATAL_ERROR "armhf libraries missing in ${WS_ARMHF_SYSROOT}: run scripts/deps --target armhf")
endif()
set(WS_ARMHF_LIBDIR "${WS_ARMHF_SYSROOT}/usr/lib/arm-linux-gnueabihf")

set(CMAKE_FIND_ROOT_PATH "${WS_ARMHF_SYSROOT}" /usr/arm-linux-gnueabihf)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

set(ENV{PKG_CONFIG_LIBDIR} "${WS_ARMHF_LIBDIR}/pkgconfig:${WS_ARMHF_SYSROOT}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${WS_ARMHF_SYSROOT}")

# libmosquitto needs libssl/libcrypto from the sysroot at link time.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-Wl,-rpath-link,${WS_ARMHF_LIBDIR}")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-Wl,-rpath-link,${WS_ARMHF_LIBDIR}")

set(CMAKE_CROSSCOMPILING_EMULATOR
    qemu-arm;-L;/usr/arm-linux-gnueabihf;-E;LD_LIBRARY_PATH=${WS_ARMHF_LIBDIR})
