#include "tests/support/test_support.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

namespace ws::testing {
namespace {

void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

}  // namespace

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/ws-test-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

namespace {

uint16_t KernelChosenLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) std::abort();
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) std::abort();
  socklen_t len = sizeof addr;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) std::abort();
  close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace

uint16_t FreeLoopbackPort() {
  // The kernel may offer a port it offered before, which is free again
  // until its taker binds it: a broker given two such "free" ports for two
  // listeners then failed to start ("Address already in use") on every
  // try. So a port goes out at most once per test process.
  static std::mutex mu;
  static std::set<uint16_t> handed_out;
  std::lock_guard<std::mutex> lock(mu);
  for (int attempt = 0; attempt < 100; ++attempt) {
    const uint16_t port = KernelChosenLoopbackPort();
    if (handed_out.insert(port).second) return port;
  }
  std::abort();  // 100 repeats in a row: the port range is nearly used up
}

bool WaitForPort(uint16_t port, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    close(fd);
    if (rc == 0) return true;
    SleepMs(20);
  }
  return false;
}

namespace {

// What a forked child needs to run a command, made before the fork: the
// child of a process with other threads may only make async-signal-safe
// calls until it execs. An allocation there can wait forever on a lock
// another thread held at the fork (seen as a test that waited out its
// timeout for an openssl that never started).
class ChildExec {
 public:
  explicit ChildExec(std::vector<std::string> argv)
      : argv_(std::move(argv)),
        failed_("exec " + (argv_.empty() ? std::string() : argv_.front()) + " failed, errno ") {
    for (std::string& a : argv_) args_.push_back(a.data());
    args_.push_back(nullptr);
  }

  // In the child: unblocks the signals the test blocked (e.g. for a
  // SignalWatcher) and execs; if that fails, says so on stderr and exits 127.
  [[noreturn]] void Run() {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (args_[0] != nullptr) execvp(args_[0], args_.data());
    const int err = errno;
    char digits[16];
    size_t at = sizeof digits;
    digits[--at] = '\n';
    int v = err;
    do {
      digits[--at] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v > 0 && at > 0);
    ssize_t n = write(2, failed_.data(), failed_.size());
    n = write(2, digits + at, sizeof digits - at);
    (void)n;
    _exit(127);
  }

 private:
  std::vector<std::string> argv_;
  std::string failed_;
  std::vector<char*> args_;
};

}  // namespace

Subprocess::Subprocess(std::vector<std::string> argv, const std::string& log_path) : log_path_(log_path) {
  ChildExec exec(std::move(argv));
  int log_fd = -1;
  if (!log_path.empty()) {
    log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    struct stat st{};
    if (log_fd >= 0 && fstat(log_fd, &st) == 0) log_start_ = static_cast<size_t>(st.st_size);
  }
  pid_ = fork();
  if (pid_ < 0) std::abort();
  if (pid_ == 0) {
    if (log_fd >= 0) {
      dup2(log_fd, 1);
      dup2(log_fd, 2);
    }
    exec.Run();
  }
  if (log_fd >= 0) close(log_fd);
}

Subprocess::~Subprocess() {
  Kill();
  if (log_path_.empty()) return;
  const std::string report = SanitizerReport(Slurp(log_path_, log_start_));
  if (!report.empty()) ADD_FAILURE() << "a sanitizer reported in " << log_path_ << ":\n" << report;
}

std::string SanitizerReport(const std::string& text) {
  static constexpr const char* kMarks[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                                           "WARNING: ThreadSanitizer", ": runtime error: "};
  size_t first = std::string::npos;
  for (const char* mark : kMarks) first = std::min(first, text.find(mark));
  if (first == std::string::npos) return "";
  const size_t line_end = text.rfind('\n', first);
  const size_t begin = line_end == std::string::npos ? 0 : line_end + 1;
  size_t end = begin;
  for (int lines = 0; lines < 40 && end < text.size(); ++lines) {
    const size_t nl = text.find('\n', end);
    end = nl == std::string::npos ? text.size() : nl + 1;
  }
  return text.substr(begin, end - begin);
}

bool Subprocess::running() {
  if (pid_ <= 0) return false;
  int st = 0;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == 0) return true;
  if (r == pid_) {
    exit_code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    pid_ = -1;
  }
  return false;
}

bool Subprocess::Signal(int sig) { return running() && kill(pid_, sig) == 0; }

int Subprocess::Wait(int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (running()) {
    if (std::chrono::steady_clock::now() >= deadline) return -1;
    SleepMs(10);
  }
  return exit_code_;
}

void Subprocess::Kill() {
  if (running()) {
    kill(pid_, SIGKILL);
    int st = 0;
    waitpid(pid_, &st, 0);
    exit_code_ = 128 + SIGKILL;
    pid_ = -1;
  }
}

int RunCommand(const std::vector<std::string>& argv, std::string* out, int timeout_ms) {
  if (argv.empty()) return -1;
  ChildExec exec(argv);
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) {
    close(pipefd[0]);
    close(pipefd[1]);
    return -1;
  }
  if (pid == 0) {
    dup2(pipefd[1], 1);
    exec.Run();
  }
  close(pipefd[1]);
  fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
  std::string buf;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  int code = -1;
  for (;;) {
    char chunk[4096];
    ssize_t n = read(pipefd[0], chunk, sizeof chunk);
    if (n > 0) {
      buf.append(chunk, static_cast<size_t>(n));
      continue;
    }
    int st = 0;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      while ((n = read(pipefd[0], chunk, sizeof chunk)) > 0) buf.append(chunk, static_cast<size_t>(n));
      code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      code = -1;
      break;
    }
    SleepMs(5);
  }
  close(pipefd[0]);
  if (out) *out = std::move(buf);
  return code;
}

std::string PasswordOnlyBrokerConfig(const TempDir& dir, const std::string& user, const std::string& password) {
  const std::string passwd = dir.File("passwd");
  if (RunCommand({"mosquitto_passwd", "-c", "-b", passwd, user, password}, nullptr, 20000) != 0) return "";
  std::error_code ec;
  std::filesystem::permissions(dir.path(), std::filesystem::perms(0755), ec);
  std::filesystem::permissions(passwd, std::filesystem::perms(0644), ec);
  if (ec) return "";
  return "allow_anonymous false\npassword_file " + passwd + "\n";
}

MosquittoBroker::MosquittoBroker(std::string extra_config, uint16_t port)
    : extra_(std::move(extra_config)), port_(port != 0 ? port : FreeLoopbackPort()) {
  log_ = dir_.File("mosquitto.log");
  if (!Start()) std::fprintf(stderr, "mosquitto did not start on port %u; log %s\n", port_, log_.c_str());
}

MosquittoBroker::~MosquittoBroker() { Kill(); }

bool MosquittoBroker::Start() {
  Kill();
  std::string conf = dir_.File("mosquitto.conf");
  {
    std::ofstream f(conf);
    f << "listener " << port_ << " 127.0.0.1\n"
      << "allow_anonymous true\n"
      << "persistence false\n"
      << "log_dest stderr\n"
      << "max_inflight_messages 0\n"
      << "max_queued_messages 1000000\n"
      << extra_ << "\n";
  }
  for (int attempt = 0; attempt < 3; ++attempt) {
    proc_ = std::make_unique<Subprocess>(std::vector<std::string>{"mosquitto", "-c", conf}, log_);
    if (WaitForPort(port_, 5000)) return true;
    Kill();
    SleepMs(200);  // the port may still be in TIME_WAIT or taken: try again
  }
  return false;
}

bool MosquittoBroker::Pause() { return proc_ != nullptr && proc_->Signal(SIGSTOP); }
bool MosquittoBroker::Resume() { return proc_ != nullptr && proc_->Signal(SIGCONT); }

void MosquittoBroker::Kill() {
  if (proc_ != nullptr) {
    proc_->Kill();
    proc_.reset();
  }
}

bool WaitUntil(const std::function<bool()>& probe, int timeout_ms, int poll_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (probe()) return true;
    SleepMs(poll_ms);
  }
  return probe();
}

std::vector<std::string> DaemonArgv(const std::vector<std::string>& args) {
  std::vector<std::string> argv = EmulatorPrefix();
  argv.push_back(DaemonPath());
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

std::string DaemonPath() { return std::string(WS_TEST_BINARY_DIR) + "/firmware/waystation"; }

std::vector<std::string> EmulatorPrefix() { return Split(WS_EMULATOR); }

std::string SourceDir() { return WS_SOURCE_DIR; }

std::string Slurp(const std::string& path, size_t from) {
  std::ifstream f(path, std::ios::binary);
  if (from > 0) f.seekg(static_cast<std::streamoff>(from));
  std::ostringstream ss;
  if (f) ss << f.rdbuf();
  return ss.str();
}

CurlReply RunCurl(const std::vector<std::string>& args, int max_time_s) {
  std::vector<std::string> argv = {"curl", "-sS", "--noproxy", "*", "--max-time", std::to_string(max_time_s),
                                   "-w", "\n@@%{http_code} %{content_type}"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out;
  CurlReply r;
  r.exit_code = RunCommand(argv, &out, (max_time_s + 30) * 1000);
  size_t marker = out.rfind("\n@@");
  if (marker == std::string::npos) return r;
  r.body = out.substr(0, marker);
  std::string tail = out.substr(marker + 3);
  size_t space = tail.find(' ');
  r.status = std::atoi(tail.substr(0, space).c_str());
  if (space != std::string::npos) r.content_type = tail.substr(space + 1);
  return r;
}

}  // namespace ws::testing
