# Third-party libraries, all from Debian packages. Each becomes an IMPORTED
# target that only its adapter links (PRIVATE), so no third-party header is
# reachable from core/.
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)

find_package(SQLite3 REQUIRED)
pkg_check_modules(MOSQUITTO REQUIRED IMPORTED_TARGET libmosquitto)
pkg_check_modules(CJSON REQUIRED IMPORTED_TARGET libcjson)

# mbedTLS 2.28 in Debian ships neither a .pc file nor a CMake config.
find_path(MBEDTLS_INCLUDE_DIR mbedtls/ssl.h REQUIRED)
find_library(MBEDTLS_LIBRARY mbedtls REQUIRED)
find_library(MBEDX509_LIBRARY mbedx509 REQUIRED)
find_library(MBEDCRYPTO_LIBRARY mbedcrypto REQUIRED)
add_library(ws_mbedtls INTERFACE)
target_include_directories(ws_mbedtls SYSTEM INTERFACE ${MBEDTLS_INCLUDE_DIR})
target_link_libraries(ws_mbedtls INTERFACE ${MBEDTLS_LIBRARY} ${MBEDX509_LIBRARY} ${MBEDCRYPTO_LIBRARY})

# libhttp-parser-dev cannot be installed for two architectures at once; a
# cross build may only have the runtime library (see scripts/deps).
find_path(HTTP_PARSER_INCLUDE_DIR http_parser.h REQUIRED)
find_library(HTTP_PARSER_LIBRARY NAMES http_parser libhttp_parser.so.2.9 REQUIRED)
add_library(ws_http_parser INTERFACE)
target_include_directories(ws_http_parser SYSTEM INTERFACE ${HTTP_PARSER_INCLUDE_DIR})
target_link_libraries(ws_http_parser INTERFACE ${HTTP_PARSER_LIBRARY})
