// The waystation daemon. Everything happens in firmware/cli.cc and node.cc.
#include "firmware/cli.h"

int main(int argc, char** argv) { return ws::RunCli(argc, argv); }
