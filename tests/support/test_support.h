// Helpers for tests that use real parts: temporary folders, child processes
// (ended only by their own PID), a real mosquitto broker on a free loopback
// port, and the daemon binary (run under the emulator in cross builds).
// Test-thread only.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ws::testing {

// A fresh folder under $TMPDIR, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A loopback TCP port that was free a moment ago (bound to port 0, closed),
// never the same one twice in a process.
uint16_t FreeLoopbackPort();

// True once something accepts TCP connections on 127.0.0.1:port.
bool WaitForPort(uint16_t port, int timeout_ms);

// A child process started with execvp. The destructor kills it (SIGKILL) by
// its PID and reaps it if it is still running, then fails the running test
// if a sanitizer reported in what it wrote to its log (see SanitizerReport):
// a daemon the tests start is built with the same sanitizers as they are,
// and its reports would otherwise stay unread in a temporary folder. A log
// that several processes append to in turn (a daemon restarted) charges
// each report to the process that wrote it, once.
class Subprocess {
 public:
  // `argv[0]` is looked up in PATH. stdout/stderr go to `log_path` if given,
  // else they are inherited.
  Subprocess(std::vector<std::string> argv, const std::string& log_path = "");
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // Sends `sig`; returns false if the process is gone.
  bool Signal(int sig);
  // Waits up to timeout_ms for exit; returns the exit code, 128+signal for a
  // signal death, or -1 on timeout.
  int Wait(int timeout_ms);
  // SIGKILL and reap.
  void Kill();

 private:
  pid_t pid_ = -1;
  int exit_code_ = -1;
  std::string log_path_;
  size_t log_start_ = 0;  // the log's size when the process started: what it wrote follows
};

// The first report of a sanitizer in `text` (AddressSanitizer,
// LeakSanitizer, ThreadSanitizer, UndefinedBehaviorSanitizer), from its
// first line on, at most 40 lines; "" if there is none.
std::string SanitizerReport(const std::string& text);

// Runs a command to completion (bounded by timeout_ms, then killed) and
// returns its exit code; stdout into *out if given.
int RunCommand(const std::vector<std::string>& argv, std::string* out, int timeout_ms = 30000);

// What curl answered: its exit code, the HTTP status (0 when there was none)
// and content type, and the body.
struct CurlReply {
  int exit_code = -1;
  int status = 0;
  std::string content_type;
  std::string body;
};
// Runs curl with `args` (no proxy, at most `max_time_s` seconds) and reads
// the status and content type from a trailer curl writes after the body.
CurlReply RunCurl(const std::vector<std::string>& args, int max_time_s = 30);

// A real mosquitto broker on 127.0.0.1 at a free port, no persistence,
// anonymous allowed. `extra_config` lines are appended to its config file.
class MosquittoBroker {
 public:
  explicit MosquittoBroker(std::string extra_config = "", uint16_t port = 0);
  ~MosquittoBroker();
  // Starts (again) on the same port. False if it did not come up.
  bool Start();
  void Kill();  // SIGKILL, like a crash or power cut of the broker
  // SIGSTOP and SIGCONT: a broker that keeps its connections (the kernel
  // still completes handshakes and takes data) but answers nothing.
  bool Pause();
  bool Resume();
  bool running() const { return proc_ != nullptr; }
  uint16_t port() const { return port_; }
  const std::string& log_path() const { return log_; }

 private:
  TempDir dir_;
  std::string extra_;
  uint16_t port_;
  std::string log_;
  std::unique_ptr<Subprocess> proc_;
};

// mosquitto.conf lines that let in only `user` with `password`: a password
// file made with mosquitto_passwd in `dir`, which is made readable to the
// broker's own user (started as root, mosquitto reads its files after
// dropping privileges). "" if mosquitto_passwd failed.
std::string PasswordOnlyBrokerConfig(const TempDir& dir, const std::string& user, const std::string& password);

// Polls `probe` every `poll_ms` until it returns true or `timeout_ms`
// passes; then asks once more. Bounded: never waits longer than timeout_ms.
bool WaitUntil(const std::function<bool()>& probe, int timeout_ms, int poll_ms = 50);

// build/<preset>/firmware/waystation of the build running this test.
std::string DaemonPath();
// The emulator prefix for target binaries ("" natively, e.g. {"qemu-aarch64","-L","/"}).
std::vector<std::string> EmulatorPrefix();
// The command line that runs the daemon with `args`, under the emulator in
// cross builds.
std::vector<std::string> DaemonArgv(const std::vector<std::string>& args);
std::string SourceDir();

// Reads a file from byte `from` on; "" if it cannot be read or is shorter.
std::string Slurp(const std::string& path, size_t from = 0);

}  // namespace ws::testing
