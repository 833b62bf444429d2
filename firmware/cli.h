// The `waystation` command line: run the node, print the version, check a
// configuration file. Main thread only.
#pragma once

namespace ws {

// Exit codes: 0 success, 1 invalid configuration, 2 usage error, 3 the node
// could not start or failed while running.
int RunCli(int argc, char** argv);

}  // namespace ws
