# One INTERFACE target carries the project's warnings and sanitizer flags; every
# Waystation target links it PRIVATE.
add_library(ws_options INTERFACE)
target_compile_options(ws_options INTERFACE
  -Wall -Wextra -Wconversion -Wsign-conversion -Wshadow -Wnon-virtual-dtor
  -Wold-style-cast -Woverloaded-virtual -Wformat=2
  $<$<BOOL:${WAYSTATION_WERROR}>:-Werror>)
target_compile_options(ws_options INTERFACE -fno-strict-aliasing)
# GCC 12 reports -Wrestrict on plain std::string concatenation at -O2
# (GCC bug 105329); the warning is noise there, so it is off for GCC < 13.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  target_compile_options(ws_options INTERFACE -Wno-restrict)
endif()

if(WAYSTATION_SANITIZE)
  string(REPLACE ";" "," _ws_san "${WAYSTATION_SANITIZE}")
  message(STATUS "Waystation: sanitizers ${_ws_san}")
  add_compile_options(-fsanitize=${_ws_san} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${_ws_san})
endif()

# Release builds: -O2 rather than CMake's default -O3, and unused functions
# and data dropped at link time. The daemon stays as fast (measured with
# tests/bench) and comes out smaller, on flash and in RSS.
string(REPLACE "-O3" "-O2" CMAKE_CXX_FLAGS_RELEASE "${CMAKE_CXX_FLAGS_RELEASE}")
string(REPLACE "-O3" "-O2" CMAKE_C_FLAGS_RELEASE "${CMAKE_C_FLAGS_RELEASE}")
add_compile_options(-ffunction-sections -fdata-sections)
add_link_options(-Wl,--gc-sections)

# 64-bit file offsets on 32-bit targets (armhf): the outbox may grow past
# 2 GiB, and readdir() on a filesystem with 64-bit directory cookies fails
# with EOVERFLOW without it. A no-op on 64-bit targets.
add_compile_definitions(_FILE_OFFSET_BITS=64)

# Trim the 64 KiB segment alignment ARM toolchains default to.
if(CMAKE_CROSSCOMPILING)
  add_link_options(-Wl,-z,max-page-size=4096)
endif()
