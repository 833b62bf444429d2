#include "firmware/cli.h"

#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "adapters/json/json_codec.h"
#include "adapters/mqtt/backbone_link.h"
#include "adapters/sqlite/sqlite_outbox.h"
#include "adapters/tls_crypto/crypto.h"
#include "firmware/build_info.h"
#include "firmware/local_api.h"
#include "firmware/node.h"
#include "platform/log.h"

namespace ws {
namespace {

constexpr char kUsage[] =
    "usage: waystation --config FILE      run the node\n"
    "       waystation check-config FILE  validate a configuration file\n"
    "       waystation --version          print version, commit, architecture and libraries\n";

void PrintVersion() {
  std::printf("waystation %s\ncommit %s\narch %s\nbuild %s\n", WS_VERSION, WS_GIT_COMMIT, WS_TARGET_ARCH,
              WS_BUILD_TYPE);
  std::printf("sqlite %s\nlibmosquitto %s\nmbedtls %s\ncjson %s\n", SqliteOutbox::LibraryVersion().c_str(),
              MosquittoLibraryVersion().c_str(), MbedtlsLibraryVersion().c_str(), CjsonLibraryVersion().c_str());
}

int CheckConfig(const std::string& path) {
  Config config;
  std::vector<std::string> errors;
  bool valid = LoadConfigFile(path, &config, &errors);
  // The certificate files a TLS listener names are checked too: one that
  // does not parse or does not match its key fails here, not at start.
  valid = CheckLocalApiTls(config.api, &errors) && valid;
  if (!valid) {
    std::fprintf(stderr, "%s: invalid configuration (%zu problem%s)\n", path.c_str(), errors.size(),
                 errors.size() == 1 ? "" : "s");
    for (const std::string& e : errors) std::fprintf(stderr, "  %s\n", e.c_str());
    return 1;
  }
  std::printf("%s: ok\n", path.c_str());
  return 0;
}

int RunNode(const std::string& path) {
  Config config;
  std::vector<std::string> errors;
  if (!LoadConfigFile(path, &config, &errors)) {
    std::fprintf(stderr, "%s: invalid configuration\n", path.c_str());
    for (const std::string& e : errors) std::fprintf(stderr, "  %s\n", e.c_str());
    return 1;
  }
  ApplyLogConfig(config.log);
  Result<std::unique_ptr<Node>> node = Node::Create(std::move(config), path);
  if (!node.ok()) {
    WS_LOG_ERROR("node", "cannot start", {{"error", node.status().ToString()}});
    return 3;
  }
  Status s = (*node)->Run();
  if (!s.ok()) {
    WS_LOG_ERROR("node", "failed", {{"error", s.ToString()}});
    return 3;
  }
  return 0;
}

}  // namespace

int RunCli(int argc, char** argv) {
  std::vector<std::string_view> args(argv + 1, argv + argc);
  if (args.size() == 1 && (args[0] == "--version" || args[0] == "-V")) {
    PrintVersion();
    return 0;
  }
  if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (args.size() == 2 && args[0] == "check-config") return CheckConfig(std::string(args[1]));
  if (args.size() == 2 && args[0] == "--config") return RunNode(std::string(args[1]));
  if (args.size() == 1 && args[0].rfind("--config=", 0) == 0) return RunNode(std::string(args[0].substr(9)));
  std::fputs(kUsage, stderr);
  return 2;
}

}  // namespace ws
