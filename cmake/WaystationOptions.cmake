# One INTERFACE target carries the project's warnings and sanitizer flags; every
# Waystation target links it PRIVATE.
add_library(ws_options INTERFACE)
target_compile_options(ws_options INTERFACE
  -Wall -Wextra -Wconversion -Wsign-conversion -Wshadow -Wnon-virtual-dtor
  -Wold-style-cast -Woverloaded-virtual -Wnull-dereference -Wformat=2
  $<$<BOOL:${WAYSTATION_WERROR}>:-Werror>)
target_compile_options(ws_options INTERFACE -fno-strict-aliasing)

if(WAYSTATION_SANITIZE)
  string(REPLACE ";" "," _ws_san "${WAYSTATION_SANITIZE}")
  message(STATUS "Waystation: sanitizers ${_ws_san}")
  add_compile_options(-fsanitize=${_ws_san} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${_ws_san})
endif()

# Trim the 64 KiB segment alignment ARM toolchains default to.
if(CMAKE_CROSSCOMPILING)
  add_link_options(-Wl,-z,max-page-size=4096)
endif()
