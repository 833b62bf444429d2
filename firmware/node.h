// The running node: owns the event loop and every part, wires them, and runs
// until SIGTERM/SIGINT. Create and Run on the main thread, before any other
// thread exists (signals are blocked for the whole process there).
#pragma once

#include <memory>
#include <string>

#include "core/config.h"
#include "platform/status.h"

namespace ws {

class Node {
 public:
  // Validates the configuration's runtime needs (folders, listen addresses),
  // opens the store, binds the local API and starts the backbone link.
  static Result<std::unique_ptr<Node>> Create(Config config, std::string config_path);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Serves until a stop signal; then stops gracefully.
  Status Run();

 private:
  class Impl;
  explicit Node(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Loads and validates a configuration file; every problem is in `errors`.
bool LoadConfigFile(const std::string& path, Config* config, std::vector<std::string>* errors);

// Applies the log settings of a configuration.
void ApplyLogConfig(const LogConfig& log);

}  // namespace ws
