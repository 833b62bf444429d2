// ws_loadgen: the benchmark's producers and subscriber, driven by
// tests/bench/run. The same events, the same producer behaviour and the same
// subscriber are used for Waystation and for the Mosquitto-bridge peer, so
// the two columns of the benchmark table differ only in the edge.
//
//   ws_loadgen http --port P [options]   producers: keep-alive HTTP/1.1 POSTs to a Waystation node
//   ws_loadgen mqtt --port P [options]   producers: QoS 1 publishes to an edge MQTT broker (ack = PUBACK)
//   ws_loadgen sub --port P [options]    a subscriber on the regional broker; runs until SIGTERM/SIGINT,
//                                        --duration, or every expected event arrived (--exit-when-complete)
//   ws_loadgen compare ACKED ARRIVED     how many acknowledged event numbers are in the arrived file
//   ws_loadgen free-port                 prints a loopback TCP port that was free a moment ago
//
// Events are 200-byte CloudEvents (structured JSON) numbered n = --first,
// --first+1, ...; the id is "<prefix>-<n>" (--ids counter, the default), a
// UUIDv4-shaped id derived from the prefix and n (--ids random, the ids most
// CloudEvents SDKs make; the same n always gets the same id) or left out
// (--ids none: the node generates one); the data carries "n", so the
// subscriber finds the number in either MQTT form (Waystation's MQTT 5
// binary mode puts only the data in the payload; the peer forwards the whole
// structured event). Each producer connection has at most --window requests
// (HTTP: 1 request, holding --batch events) or publishes (MQTT) outstanding
// and sends the next when the answer came, paced by --rate if given. Every
// run is bounded by --count AND --duration.
//
// With --sub-port the subscriber runs in this process on its own thread, so
// acknowledgement and arrival times are read from the same CLOCK_MONOTONIC:
// after producing, the run waits (at most --sub-wait s) for every
// acknowledged event to arrive and reports the forward rate and the
// acknowledgement -> arrival latency.
//
// Results are printed as key=value lines on stdout (the script reads them).
// Threads: producers and their epoll loop on the main thread; the optional
// subscriber owns its mosquitto handle on its own thread and shares only
// atomics with the main thread until it is joined.
#include <arpa/inet.h>
#include <fcntl.h>
#include <mosquitto.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kEventBytes = 200;
constexpr int64_t kNsPerS = 1'000'000'000;
constexpr int64_t kNsPerMs = 1'000'000;
constexpr int64_t kNotYet = -1;

int64_t NowNs(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<int64_t>(ts.tv_sec) * kNsPerS + static_cast<int64_t>(ts.tv_nsec);
}
int64_t MonoNs() { return NowNs(CLOCK_MONOTONIC); }
int64_t RealNs() { return NowNs(CLOCK_REALTIME); }

void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "ws_loadgen: %s\n", message.c_str());
  std::exit(2);
}

// The file descriptor of a socket, closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& other) noexcept : fd_(other.Release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = other.Release();
    }
    return *this;
  }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// ---------------------------------------------------------------------------
// Options

struct Options {
  std::string mode;
  std::vector<std::string> positional;
  uint16_t port = 0;
  int connections = 1;
  int64_t count = 1000;
  double duration_s = 10;
  double rate = 0;  // events/s over all connections; 0 = as fast as answers come
  int batch = 1;    // http: events per request
  int window = 1;   // mqtt: publishes outstanding per connection
  int64_t first = 0;
  std::string prefix = "b";
  std::string ids = "counter";  // counter | random | none
  std::string topic = "waystation/bench/peer/events/com.example.bench.reading";
  std::string acked_file;
  uint16_t sub_port = 0;
  std::string sub_topic = "waystation/+/+/events/#";
  double sub_wait_s = 60;
  // sub mode
  std::string client_id = "ws-bench-sub";
  bool persistent = false;
  bool exit_when_complete = false;
  std::string progress_file;
  std::string arrived_file;
  std::string ready_file;
};

bool ParseInt(const char* s, int64_t* out) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') return false;
  *out = static_cast<int64_t>(v);
  return true;
}

bool ParseDouble(const char* s, double* out) {
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s, &end);
  if (errno != 0 || end == s || *end != '\0') return false;
  *out = v;
  return true;
}

Options ParseOptions(int argc, char** argv) {
  if (argc < 2) Die("usage: ws_loadgen http|mqtt|sub|compare|free-port [options] (see the head of loadgen.cc)");
  Options o;
  o.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      o.positional.push_back(a);
      continue;
    }
    const bool flag = a == "--persistent" || a == "--exit-when-complete";
    if (!flag && i + 1 >= argc) Die(a + " needs a value");
    const char* v = flag ? "" : argv[++i];
    int64_t n = 0;
    double d = 0;
    auto need_int = [&](int64_t lo, int64_t hi) {
      if (!ParseInt(v, &n) || n < lo || n > hi) Die(a + ": expected an integer in [" + std::to_string(lo) + ", " +
                                                    std::to_string(hi) + "], got '" + v + "'");
      return n;
    };
    auto need_double = [&](double lo) {
      if (!ParseDouble(v, &d) || d < lo) Die(a + ": expected a number >= " + std::to_string(lo));
      return d;
    };
    if (a == "--port") o.port = static_cast<uint16_t>(need_int(1, 65535));
    else if (a == "--connections") o.connections = static_cast<int>(need_int(1, 4096));
    else if (a == "--count") o.count = need_int(1, INT64_C(100'000'000));
    else if (a == "--duration") o.duration_s = need_double(0.001);
    else if (a == "--rate") o.rate = need_double(0);
    else if (a == "--batch") o.batch = static_cast<int>(need_int(1, 1000));
    else if (a == "--window") o.window = static_cast<int>(need_int(1, 65535));
    else if (a == "--first") o.first = need_int(0, INT64_C(1'000'000'000'000));
    else if (a == "--prefix") o.prefix = v;
    else if (a == "--ids") {
      o.ids = v;
      if (o.ids != "counter" && o.ids != "random" && o.ids != "none") Die("--ids: expected counter, random or none");
    }
    else if (a == "--topic") o.topic = v;
    else if (a == "--acked") o.acked_file = v;
    else if (a == "--sub-port") o.sub_port = static_cast<uint16_t>(need_int(1, 65535));
    else if (a == "--sub-topic") o.sub_topic = v;
    else if (a == "--sub-wait") o.sub_wait_s = need_double(0);
    else if (a == "--client-id") o.client_id = v;
    else if (a == "--persistent") o.persistent = true;
    else if (a == "--exit-when-complete") o.exit_when_complete = true;
    else if (a == "--progress") o.progress_file = v;
    else if (a == "--arrived") o.arrived_file = v;
    else if (a == "--ready") o.ready_file = v;
    else Die("unknown option " + a);
  }
  return o;
}

// ---------------------------------------------------------------------------
// Events

// A 64-bit mix (splitmix64's finaliser): distinct inputs, scattered outputs.
uint64_t Mix64(uint64_t x) {
  x += UINT64_C(0x9e3779b97f4a7c15);
  x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
  return x ^ (x >> 31);
}

// The id member of event n, as --ids asks: "<prefix>-<n>", a UUIDv4-shaped
// id that depends only on the prefix and n (ids of one run sort in no useful
// order, as random ids from real producers do), or none.
std::string EventIdMember(const std::string& prefix, int64_t n, const std::string& ids) {
  if (ids == "none") return "";
  if (ids == "counter") return "\"id\":\"" + prefix + "-" + std::to_string(n) + "\",";
  const uint64_t seed = std::hash<std::string>{}(prefix);
  const uint64_t hi = Mix64(seed ^ static_cast<uint64_t>(n));
  const uint64_t lo = Mix64(hi ^ UINT64_C(0x5851f42d4c957f2d));
  char id[64];
  std::snprintf(id, sizeof id, "\"id\":\"%08" PRIx64 "-%04" PRIx64 "-4%03" PRIx64 "-%04" PRIx64 "-%012" PRIx64 "\",",
                hi >> 32, (hi >> 16) & 0xffff, hi & 0xfff, ((lo >> 48) & 0x3fff) | 0x8000, lo & UINT64_C(0xffffffffffff));
  return id;
}

// One structured CloudEvent of exactly kEventBytes bytes (padded in data).
std::string EventJson(const std::string& prefix, int64_t n, int connection, const std::string& ids) {
  char head[256];
  const std::string id = EventIdMember(prefix, n, ids);
  const int len = std::snprintf(head, sizeof head,
                                "{\"specversion\":\"1.0\",%s"
                                "\"source\":\"/bench/p%d\",\"type\":\"com.example.bench.reading\","
                                "\"datacontenttype\":\"application/json\",\"data\":{\"n\":%" PRId64 ",\"pad\":\"",
                                id.c_str(), connection, n);
  if (len < 0 || static_cast<size_t>(len) + 3 > kEventBytes) Die("event prefix or number too long for a 200-byte event");
  std::string e(head, static_cast<size_t>(len));
  constexpr std::string_view kTail = "\"}}";
  const size_t pad = e.size() + kTail.size() < kEventBytes ? kEventBytes - e.size() - kTail.size() : 0;
  e.append(pad, 'x');
  e.append(kTail);
  return e;
}

// The event number in a payload: the digits after the first "n": (the data
// member; no CloudEvents attribute is called "n"). -1 if there is none.
int64_t EventNumberIn(const void* payload, int len) {
  if (payload == nullptr || len <= 0) return -1;
  std::string_view p(static_cast<const char*>(payload), static_cast<size_t>(len));
  const size_t at = p.find("\"n\":");
  if (at == std::string_view::npos) return -1;
  int64_t v = 0;
  size_t i = at + 4;
  if (i >= p.size() || p[i] < '0' || p[i] > '9') return -1;
  for (; i < p.size() && p[i] >= '0' && p[i] <= '9'; ++i) v = v * 10 + (p[i] - '0');
  return v;
}

// ---------------------------------------------------------------------------
// Statistics

double Percentile(std::vector<int64_t>* values, double q) {
  if (values->empty()) return 0;
  const auto k = static_cast<size_t>(q * static_cast<double>(values->size() - 1));
  std::nth_element(values->begin(), values->begin() + static_cast<std::ptrdiff_t>(k), values->end());
  return static_cast<double>((*values)[k]);
}

void PrintKv(const char* key, double value) { std::printf("%s=%.6g\n", key, value); }
void PrintKv(const char* key, int64_t value) { std::printf("%s=%" PRId64 "\n", key, value); }

// What the producers saw, indexed by event number - first.
struct ProducerRecord {
  int64_t first = 0;
  std::vector<int64_t> ack_ns;  // kNotYet until acknowledged
  std::vector<int64_t> request_latency_ns;
  // Events not acknowledged, by HTTP status, or -1: the connection failed
  // before an answer, -3: still unanswered when the run's time was up.
  std::map<int, int64_t> failures;
  int64_t connect_failures = 0;  // HTTP connections refused (retried after 50 ms)
  int64_t sent = 0;
  int64_t acked = 0;
  int64_t start_ns = 0;
  int64_t last_ack_ns = 0;

  void Init(int64_t first_n, int64_t count) {
    first = first_n;
    ack_ns.assign(static_cast<size_t>(count), kNotYet);
  }
  void Ack(int64_t n, int64_t now) {
    ack_ns[static_cast<size_t>(n - first)] = now;
    ++acked;
    last_ack_ns = now;
  }
  void Fail(int why, int64_t events) { failures[why] += events; }
};

void WriteAcked(const ProducerRecord& r, const std::string& path) {
  if (path.empty()) return;
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) Die("cannot write " + path);
  for (size_t i = 0; i < r.ack_ns.size(); ++i) {
    if (r.ack_ns[i] != kNotYet) std::fprintf(f, "%" PRId64 "\n", r.first + static_cast<int64_t>(i));
  }
  if (std::fclose(f) != 0) Die("cannot write " + path);
}

// The send schedule: event k (from 0) is due at start + k / rate.
struct Pacer {
  double rate = 0;
  int64_t start_ns = 0;
  int64_t DueNs(int64_t k) const {
    if (rate <= 0) return 0;
    return start_ns + static_cast<int64_t>(static_cast<double>(k) * 1e9 / rate);
  }
};

// ---------------------------------------------------------------------------
// Subscriber (libmosquitto, MQTT 3.1.1, QoS 1)

class Subscriber {
 public:
  // Arrivals of event numbers [first, first + count) are recorded; others
  // are counted as foreign.
  Subscriber(uint16_t port, std::string topic, std::string client_id, bool persistent, int64_t first, int64_t count)
      : port_(port),
        topic_(std::move(topic)),
        client_id_(std::move(client_id)),
        persistent_(persistent),
        first_(first),
        arrival_ns_(static_cast<size_t>(count), kNotYet) {}
  ~Subscriber() { Stop(); }
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;

  void Start() { thread_ = std::thread([this] { Run(); }); }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  bool subscribed() const { return subscribed_.load(); }
  int64_t unique() const { return unique_.load(); }
  int64_t total() const { return total_.load(); }
  int64_t foreign() const { return foreign_.load(); }
  int64_t first_arrival_real_ns() const { return first_real_ns_.load(); }
  int64_t last_arrival_real_ns() const { return last_real_ns_.load(); }
  int64_t last_arrival_mono_ns() const { return last_mono_ns_.load(); }
  int64_t connects() const { return connects_.load(); }
  // Only after Stop().
  const std::vector<int64_t>& arrival_ns() const { return arrival_ns_; }
  int64_t first() const { return first_; }

 private:
  static void OnConnect(mosquitto* m, void* self_ptr, int rc) {
    auto* self = static_cast<Subscriber*>(self_ptr);
    if (rc != 0) return;
    self->connects_.fetch_add(1);
    int mid = 0;
    if (mosquitto_subscribe(m, &mid, self->topic_.c_str(), 1) != MOSQ_ERR_SUCCESS) {
      std::fprintf(stderr, "ws_loadgen: subscribe failed\n");
    }
  }
  static void OnSubscribe(mosquitto*, void* self_ptr, int, int, const int*) {
    static_cast<Subscriber*>(self_ptr)->subscribed_.store(true);
  }
  static void OnMessage(mosquitto*, void* self_ptr, const mosquitto_message* msg) {
    auto* self = static_cast<Subscriber*>(self_ptr);
    const int64_t mono = MonoNs();
    const int64_t real = RealNs();
    self->total_.fetch_add(1, std::memory_order_relaxed);
    const int64_t n = EventNumberIn(msg->payload, msg->payloadlen);
    const int64_t k = n - self->first_;
    if (n < 0 || k < 0 || k >= static_cast<int64_t>(self->arrival_ns_.size())) {
      self->foreign_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    int64_t& slot = self->arrival_ns_[static_cast<size_t>(k)];
    if (slot != kNotYet) return;  // a duplicate: at-least-once allows it
    slot = mono;
    self->unique_.fetch_add(1, std::memory_order_relaxed);
    if (self->first_real_ns_.load(std::memory_order_relaxed) == 0) self->first_real_ns_.store(real);
    self->last_real_ns_.store(real, std::memory_order_relaxed);
    self->last_mono_ns_.store(mono, std::memory_order_relaxed);
  }

  void Run() {
    mosquitto* m = mosquitto_new(client_id_.c_str(), !persistent_, this);
    if (m == nullptr) Die("mosquitto_new failed");
    std::unique_ptr<mosquitto, void (*)(mosquitto*)> owner(m, mosquitto_destroy);
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_connect_callback_set(m, OnConnect);
    mosquitto_subscribe_callback_set(m, OnSubscribe);
    mosquitto_message_callback_set(m, OnMessage);
    bool have_socket = false;
    bool ever_connected = false;
    int64_t last_misc = 0;
    while (!stop_.load()) {
      if (!have_socket) {
        // The broker may be down (an outage scenario): try again every 20 ms.
        const int rc = ever_connected ? mosquitto_reconnect(m) : mosquitto_connect(m, "127.0.0.1", port_, 60);
        if (rc != MOSQ_ERR_SUCCESS) {
          SleepMs(20);
          continue;
        }
        have_socket = true;
        ever_connected = true;
      }
      pollfd p{mosquitto_socket(m), static_cast<short>(POLLIN | (mosquitto_want_write(m) ? POLLOUT : 0)), 0};
      const int ready = poll(&p, 1, 50);
      int rc = MOSQ_ERR_SUCCESS;
      if (ready > 0 && (p.revents & (POLLIN | POLLERR | POLLHUP)) != 0) {
        // One packet per call: keep reading while bytes wait, bounded.
        for (int i = 0; i < 4096 && rc == MOSQ_ERR_SUCCESS; ++i) {
          rc = mosquitto_loop_read(m, 1);
          pollfd again{mosquitto_socket(m), POLLIN, 0};
          if (rc != MOSQ_ERR_SUCCESS || again.fd < 0 || poll(&again, 1, 0) <= 0) break;
        }
      }
      if (rc == MOSQ_ERR_SUCCESS && mosquitto_want_write(m)) rc = mosquitto_loop_write(m, 1);
      const int64_t now = MonoNs();
      if (rc == MOSQ_ERR_SUCCESS && now - last_misc > 500 * kNsPerMs) {
        rc = mosquitto_loop_misc(m);
        last_misc = now;
      }
      if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(m) < 0) {
        subscribed_.store(false);
        have_socket = false;
        SleepMs(20);
      }
    }
    if (have_socket) {
      mosquitto_disconnect(m);
      mosquitto_loop_write(m, 1);
    }
  }

  const uint16_t port_;
  const std::string topic_;
  const std::string client_id_;
  const bool persistent_;
  const int64_t first_;
  std::vector<int64_t> arrival_ns_;  // written by the subscriber thread only
  std::atomic<bool> stop_{false};
  std::atomic<bool> subscribed_{false};
  std::atomic<int64_t> unique_{0};
  std::atomic<int64_t> total_{0};
  std::atomic<int64_t> foreign_{0};
  std::atomic<int64_t> first_real_ns_{0};
  std::atomic<int64_t> last_real_ns_{0};
  std::atomic<int64_t> last_mono_ns_{0};
  std::atomic<int64_t> connects_{0};
  std::thread thread_;
};

// ---------------------------------------------------------------------------
// HTTP producers: one epoll loop, N keep-alive connections.

class HttpProducers {
 public:
  HttpProducers(const Options& o, ProducerRecord* record) : o_(o), rec_(record) {}

  void Run() {
    epoll_.Reset();
    epoll_ = Fd(epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_.valid()) Die("epoll_create1 failed");
    conns_.resize(static_cast<size_t>(o_.connections));
    for (size_t i = 0; i < conns_.size(); ++i) conns_[i].index = static_cast<int>(i);
    const int64_t start = MonoNs();
    rec_->start_ns = start;
    pacer_ = Pacer{o_.rate, start};
    const int64_t deadline = start + static_cast<int64_t>(o_.duration_s * 1e9);
    // Answers still owed when the time is up get this long to come.
    const int64_t hard_deadline = deadline + 30 * kNsPerS;
    next_k_ = 0;
    for (;;) {
      const int64_t now = MonoNs();
      const bool issuing = now < deadline && next_k_ < o_.count;
      int64_t wake_ns = now + 100 * kNsPerMs;
      bool any_busy = false;
      for (Conn& c : conns_) {
        if (c.busy) {
          any_busy = true;
          continue;
        }
        if (!issuing || next_k_ >= o_.count) continue;
        const int64_t due = pacer_.DueNs(next_k_);
        if (due > now) {
          wake_ns = std::min(wake_ns, due);
          continue;
        }
        if (!c.fd.valid() && !Connect(&c, now)) {
          wake_ns = std::min(wake_ns, now + 50 * kNsPerMs);
          continue;
        }
        Issue(&c, now);
        any_busy = any_busy || c.busy;
      }
      if (!issuing && !any_busy) break;
      if (now >= hard_deadline) {
        for (Conn& c : conns_) {
          if (c.busy) Drop(&c, -1);
        }
        break;
      }
      if (!issuing) wake_ns = std::min(wake_ns, hard_deadline);
      const int64_t wait_ms = std::max<int64_t>(0, (wake_ns - now + kNsPerMs - 1) / kNsPerMs);
      epoll_event events[256];
      const int n = epoll_wait(epoll_.get(), events, 256, static_cast<int>(std::min<int64_t>(wait_ms, 100)));
      for (int i = 0; i < n; ++i) {
        Conn& c = conns_[events[i].data.u32];
        if (!c.fd.valid()) continue;
        if ((events[i].events & EPOLLOUT) != 0) Flush(&c);
        if (c.fd.valid() && (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) Read(&c);
      }
    }
  }

 private:
  struct Conn {
    int index = 0;
    Fd fd;
    bool busy = false;
    bool want_out = false;
    std::string out;
    size_t out_off = 0;
    std::string in;
    int64_t first_k = 0;  // events [first_k, first_k + events) are in this request
    int64_t events = 0;
    int64_t sent_ns = 0;
    int64_t retry_at_ns = 0;
  };

  bool Connect(Conn* c, int64_t now) {
    if (now < c->retry_at_ns) return false;
    Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) Die("socket failed");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(o_.port);
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      c->retry_at_ns = now + 50 * kNsPerMs;
      ++rec_->connect_failures;
      return false;
    }
    int one = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const int flags = fcntl(fd.get(), F_GETFL, 0);
    fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = static_cast<uint32_t>(c->index);
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd.get(), &ev) != 0) Die("epoll_ctl failed");
    c->fd = std::move(fd);
    c->in.clear();
    c->want_out = false;
    return true;
  }

  void Issue(Conn* c, int64_t now) {
    const int64_t left = o_.count - next_k_;
    const int64_t k = std::min<int64_t>(o_.batch, left);
    c->first_k = next_k_;
    c->events = k;
    next_k_ += k;
    std::string body;
    const bool batch = o_.batch > 1;
    if (batch) {
      body.reserve(static_cast<size_t>(k) * (kEventBytes + 1) + 2);
      body.push_back('[');
      for (int64_t i = 0; i < k; ++i) {
        if (i > 0) body.push_back(',');
        body += EventJson(o_.prefix, o_.first + c->first_k + i, c->index, o_.ids);
      }
      body.push_back(']');
    } else {
      body = EventJson(o_.prefix, o_.first + c->first_k, c->index, o_.ids);
    }
    c->out = batch ? "POST /v1/events:batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Content-Type: application/cloudevents-batch+json\r\n"
                   : "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Content-Type: application/cloudevents+json\r\n";
    c->out += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
    c->out += body;
    c->out_off = 0;
    c->busy = true;
    c->sent_ns = now;
    rec_->sent += k;
    Flush(c);
  }

  void Flush(Conn* c) {
    while (c->out_off < c->out.size()) {
      const ssize_t n = send(c->fd.get(), c->out.data() + c->out_off, c->out.size() - c->out_off, MSG_NOSIGNAL);
      if (n > 0) {
        c->out_off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        SetWantOut(c, true);
        return;
      }
      Drop(c, -1);
      return;
    }
    SetWantOut(c, false);
  }

  void SetWantOut(Conn* c, bool want) {
    if (c->want_out == want) return;
    epoll_event ev{};
    ev.events = EPOLLIN | (want ? EPOLLOUT : 0u);
    ev.data.u32 = static_cast<uint32_t>(c->index);
    epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c->fd.get(), &ev);
    c->want_out = want;
  }

  // The request on `c` failed: its events count as not acknowledged.
  void Drop(Conn* c, int why) {
    if (c->busy) rec_->Fail(why, c->events);
    c->busy = false;
    if (c->fd.valid()) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c->fd.get(), nullptr);
    c->fd.Reset();
    c->in.clear();
    c->want_out = false;
    c->retry_at_ns = MonoNs() + 50 * kNsPerMs;
  }

  void Read(Conn* c) {
    char buf[16384];
    for (;;) {
      const ssize_t n = recv(c->fd.get(), buf, sizeof buf, 0);
      if (n > 0) {
        c->in.append(buf, static_cast<size_t>(n));
        if (static_cast<size_t>(n) < sizeof buf) break;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      Drop(c, -1);  // closed or reset
      return;
    }
    ParseAnswers(c);
  }

  static bool HeaderIs(std::string_view line, std::string_view name) {
    if (line.size() <= name.size() || line[name.size()] != ':') return false;
    for (size_t i = 0; i < name.size(); ++i) {
      char a = line[i];
      if (a >= 'A' && a <= 'Z') a = static_cast<char>(a - 'A' + 'a');
      if (a != name[i]) return false;
    }
    return true;
  }

  void ParseAnswers(Conn* c) {
    for (;;) {
      const size_t head_end = c->in.find("\r\n\r\n");
      if (head_end == std::string::npos) {
        if (c->in.size() > 65536) Drop(c, -1);
        return;
      }
      const std::string_view head(c->in.data(), head_end);
      if (head.size() < 12 || head.substr(0, 9) != "HTTP/1.1 ") {
        Drop(c, -1);
        return;
      }
      const int status = std::atoi(c->in.c_str() + 9);
      size_t content_length = 0;
      bool close_after = false;
      size_t pos = head.find("\r\n");
      while (pos != std::string_view::npos && pos < head.size()) {
        const size_t next = head.find("\r\n", pos + 2);
        const std::string_view line = head.substr(pos + 2, (next == std::string_view::npos ? head.size() : next) - pos - 2);
        if (HeaderIs(line, "content-length")) {
          content_length = static_cast<size_t>(std::strtoull(std::string(line.substr(15)).c_str(), nullptr, 10));
        } else if (HeaderIs(line, "connection") && line.find("close") != std::string_view::npos) {
          close_after = true;
        } else if (HeaderIs(line, "transfer-encoding")) {
          Drop(c, -1);  // the API answers with Content-Length; anything else is a failure here
          return;
        }
        pos = next;
      }
      if (c->in.size() < head_end + 4 + content_length) return;  // body not complete yet
      c->in.erase(0, head_end + 4 + content_length);
      if (!c->busy) {
        Drop(c, -1);  // an answer nobody asked for
        return;
      }
      const int64_t now = MonoNs();
      c->busy = false;
      if (status == 202) {
        for (int64_t i = 0; i < c->events; ++i) rec_->Ack(o_.first + c->first_k + i, now);
        rec_->request_latency_ns.push_back(now - c->sent_ns);
      } else {
        rec_->Fail(status, c->events);
      }
      if (close_after) {
        Drop(c, 0);
        return;
      }
    }
  }

  const Options& o_;
  ProducerRecord* rec_;
  Fd epoll_;
  std::vector<Conn> conns_;
  Pacer pacer_;
  int64_t next_k_ = 0;
};

// ---------------------------------------------------------------------------
// MQTT producers: N libmosquitto clients driven from one epoll loop.

class MqttProducers {
 public:
  MqttProducers(const Options& o, ProducerRecord* record) : o_(o), rec_(record) {}
  ~MqttProducers() {
    for (Client& c : clients_) {
      if (c.m != nullptr) mosquitto_destroy(c.m);
    }
  }
  MqttProducers(const MqttProducers&) = delete;
  MqttProducers& operator=(const MqttProducers&) = delete;

  void Run() {
    epoll_ = Fd(epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_.valid()) Die("epoll_create1 failed");
    clients_.resize(static_cast<size_t>(o_.connections));
    const int64_t connect_deadline = MonoNs() + 20 * kNsPerS;
    for (size_t i = 0; i < clients_.size(); ++i) {
      Client& c = clients_[i];
      c.owner = this;
      c.index = static_cast<int>(i);
      const std::string id = "ws-bench-pub-" + std::to_string(getpid()) + "-" + std::to_string(i);
      c.m = mosquitto_new(id.c_str(), true, &c);
      if (c.m == nullptr) Die("mosquitto_new failed");
      mosquitto_int_option(c.m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
      mosquitto_max_inflight_messages_set(c.m, static_cast<unsigned>(o_.window));
      mosquitto_connect_callback_set(c.m, OnConnect);
      mosquitto_disconnect_callback_set(c.m, OnDisconnect);
      mosquitto_publish_callback_set(c.m, OnPublish);
      while (mosquitto_connect(c.m, "127.0.0.1", o_.port, 60) != MOSQ_ERR_SUCCESS) {
        if (MonoNs() > connect_deadline) Die("cannot connect to the edge broker on port " + std::to_string(o_.port));
        SleepMs(50);
      }
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u32 = static_cast<uint32_t>(i);
      if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, mosquitto_socket(c.m), &ev) != 0) Die("epoll_ctl failed");
      Service(&c);
    }
    // Wait for every CONNACK before the clock starts.
    while (std::any_of(clients_.begin(), clients_.end(), [](const Client& c) { return !c.connected && !c.dead; })) {
      if (MonoNs() > connect_deadline) Die("no CONNACK from the edge broker");
      Poll(50);
    }
    const int64_t start = MonoNs();
    rec_->start_ns = start;
    pacer_ = Pacer{o_.rate, start};
    const int64_t deadline = start + static_cast<int64_t>(o_.duration_s * 1e9);
    const int64_t hard_deadline = deadline + 30 * kNsPerS;
    int64_t last_misc = start;
    for (;;) {
      const int64_t now = MonoNs();
      const bool issuing = now < deadline && next_k_ < o_.count;
      int64_t wake_ns = now + 100 * kNsPerMs;
      bool any_inflight = false;
      for (Client& c : clients_) {
        if (c.dead) continue;
        while (issuing && next_k_ < o_.count && c.inflight.size() < static_cast<size_t>(o_.window)) {
          const int64_t due = pacer_.DueNs(next_k_);
          if (due > now) {
            wake_ns = std::min(wake_ns, due);
            break;
          }
          Publish(&c, now);
          if (c.dead) break;
        }
        if (!c.inflight.empty()) any_inflight = true;
        Service(&c);
      }
      if (!issuing && !any_inflight) break;
      if (now >= hard_deadline) break;
      if (now - last_misc > 1000 * kNsPerMs) {
        for (Client& c : clients_) {
          if (!c.dead) mosquitto_loop_misc(c.m);
        }
        last_misc = now;
      }
      if (!issuing) wake_ns = std::min(wake_ns, hard_deadline);
      const int64_t wait_ms = std::max<int64_t>(0, (wake_ns - now + kNsPerMs - 1) / kNsPerMs);
      Poll(static_cast<int>(std::min<int64_t>(wait_ms, 100)));
    }
    for (Client& c : clients_) {
      if (!c.inflight.empty()) rec_->Fail(c.dead ? -1 : -3, static_cast<int64_t>(c.inflight.size()));
      c.inflight.clear();
      if (!c.dead) {
        mosquitto_disconnect(c.m);
        mosquitto_loop_write(c.m, 1);
      }
    }
  }

 private:
  struct Pending {
    int64_t k = 0;
    int64_t sent_ns = 0;
  };
  struct Client {
    MqttProducers* owner = nullptr;
    int index = 0;
    mosquitto* m = nullptr;
    bool connected = false;
    bool dead = false;
    bool want_out = false;
    std::unordered_map<int, Pending> inflight;  // by message id
  };

  static void OnConnect(mosquitto*, void* obj, int rc) {
    auto* c = static_cast<Client*>(obj);
    if (rc == 0) c->connected = true;
    else c->dead = true;
  }
  static void OnDisconnect(mosquitto*, void* obj, int) {
    auto* c = static_cast<Client*>(obj);
    c->connected = false;
    c->dead = true;
  }
  static void OnPublish(mosquitto*, void* obj, int mid) {
    auto* c = static_cast<Client*>(obj);
    auto it = c->inflight.find(mid);
    if (it == c->inflight.end()) return;
    const int64_t now = MonoNs();
    ProducerRecord* rec = c->owner->rec_;
    rec->Ack(c->owner->o_.first + it->second.k, now);
    rec->request_latency_ns.push_back(now - it->second.sent_ns);
    c->inflight.erase(it);
  }

  void Publish(Client* c, int64_t now) {
    const int64_t k = next_k_++;
    const std::string payload = EventJson(o_.prefix, o_.first + k, c->index, o_.ids);
    int mid = 0;
    const int rc = mosquitto_publish(c->m, &mid, o_.topic.c_str(), static_cast<int>(payload.size()), payload.data(), 1,
                                     false);
    ++rec_->sent;
    if (rc != MOSQ_ERR_SUCCESS) {
      rec_->Fail(-1, 1);
      c->dead = true;
      return;
    }
    c->inflight[mid] = Pending{k, now};
  }

  // Reads what arrived, writes what is queued, keeps EPOLLOUT in step.
  void Service(Client* c) {
    if (c->dead) return;
    if (mosquitto_want_write(c->m) && mosquitto_loop_write(c->m, 1) != MOSQ_ERR_SUCCESS) {
      MarkDead(c);
      return;
    }
    const bool want = mosquitto_want_write(c->m);
    if (want != c->want_out) {
      epoll_event ev{};
      ev.events = EPOLLIN | (want ? EPOLLOUT : 0u);
      ev.data.u32 = static_cast<uint32_t>(c->index);
      epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, mosquitto_socket(c->m), &ev);
      c->want_out = want;
    }
  }

  void MarkDead(Client* c) {
    if (c->dead) return;
    c->dead = true;
    const int fd = mosquitto_socket(c->m);
    if (fd >= 0) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  }

  void Poll(int timeout_ms) {
    epoll_event events[256];
    const int n = epoll_wait(epoll_.get(), events, 256, timeout_ms);
    for (int i = 0; i < n; ++i) {
      Client& c = clients_[events[i].data.u32];
      if (c.dead) continue;
      if ((events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) {
        // One packet per call; a few per wake-up keeps the epoll calls down.
        for (int j = 0; j < 64; ++j) {
          if (mosquitto_loop_read(c.m, 1) != MOSQ_ERR_SUCCESS) {
            MarkDead(&c);
            break;
          }
          pollfd p{mosquitto_socket(c.m), POLLIN, 0};
          if (p.fd < 0 || poll(&p, 1, 0) <= 0) break;
        }
      }
      Service(&c);
    }
  }

  const Options& o_;
  ProducerRecord* rec_;
  Fd epoll_;
  std::vector<Client> clients_;
  Pacer pacer_;
  int64_t next_k_ = 0;
};

// ---------------------------------------------------------------------------
// Modes

void ReportProducers(const Options& o, ProducerRecord* rec) {
  PrintKv("sent", rec->sent);
  PrintKv("acked", rec->acked);
  int64_t failed = 0;
  for (const auto& [why, events] : rec->failures) {
    failed += events;
    const std::string key = why >= 0 ? "failed_status_" + std::to_string(why)
                                     : why == -1 ? "failed_no_answer" : "failed_unanswered_at_end";
    PrintKv(key.c_str(), events);
  }
  PrintKv("failed", failed);
  PrintKv("connect_failures", rec->connect_failures);
  const double elapsed = rec->acked > 0 ? static_cast<double>(rec->last_ack_ns - rec->start_ns) / 1e9 : 0;
  PrintKv("accept_elapsed_s", elapsed);
  PrintKv("accept_rate", elapsed > 0 ? static_cast<double>(rec->acked) / elapsed : 0);
  PrintKv("requests", static_cast<int64_t>(rec->request_latency_ns.size()));
  PrintKv("ack_p50_ms", Percentile(&rec->request_latency_ns, 0.50) / 1e6);
  PrintKv("ack_p99_ms", Percentile(&rec->request_latency_ns, 0.99) / 1e6);
  PrintKv("events_per_request", static_cast<int64_t>(o.mode == "http" ? o.batch : 1));
}

// CPU time of this process (all threads) against the wall clock since
// `start_ns`: near 1.0 means the load generator itself may be the limit.
void ReportOwnCpu(int64_t start_ns) {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const double cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                     static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  const double wall = static_cast<double>(MonoNs() - start_ns) / 1e9;
  PrintKv("loadgen_cpu_s", cpu);
  PrintKv("loadgen_wall_s", wall);
  PrintKv("loadgen_cpu_share", wall > 0 ? cpu / wall : 0);
}

int RunProducers(const Options& o) {
  if (o.port == 0) Die("--port is required");
  ProducerRecord rec;
  rec.Init(o.first, o.count);
  std::unique_ptr<Subscriber> sub;
  if (o.sub_port != 0) {
    sub = std::make_unique<Subscriber>(o.sub_port, o.sub_topic, o.client_id + "-" + std::to_string(getpid()), false,
                                       o.first, o.count);
    sub->Start();
    const int64_t until = MonoNs() + 20 * kNsPerS;
    while (!sub->subscribed()) {
      if (MonoNs() > until) Die("the subscriber could not subscribe on port " + std::to_string(o.sub_port));
      SleepMs(10);
    }
  }
  if (o.mode == "http") {
    HttpProducers producers(o, &rec);
    producers.Run();
  } else {
    MqttProducers producers(o, &rec);
    producers.Run();
  }
  ReportProducers(o, &rec);
  WriteAcked(rec, o.acked_file);
  if (sub) {
    // Every acknowledged event should arrive; wait for them, bounded.
    const int64_t until = MonoNs() + static_cast<int64_t>(o.sub_wait_s * 1e9);
    int64_t last_unique = -1;
    int64_t last_change = MonoNs();
    while (MonoNs() < until) {
      const int64_t u = sub->unique();
      if (u >= rec.acked) break;  // arrivals of unacknowledged numbers could end this early; they are rare
      if (u != last_unique) {
        last_unique = u;
        last_change = MonoNs();
      }
      // Nothing new for 10 s with the link up: the rest is not coming.
      if (MonoNs() - last_change > 10 * kNsPerS) break;
      SleepMs(20);
    }
    sub->Stop();
    const std::vector<int64_t>& arrival = sub->arrival_ns();
    std::vector<int64_t> latency;
    latency.reserve(static_cast<size_t>(rec.acked));
    int64_t acked_arrived = 0;
    int64_t last_arrival = 0;
    for (size_t i = 0; i < arrival.size(); ++i) {
      if (arrival[i] != kNotYet) last_arrival = std::max(last_arrival, arrival[i]);
      if (rec.ack_ns[i] == kNotYet || arrival[i] == kNotYet) continue;
      ++acked_arrived;
      latency.push_back(arrival[i] - rec.ack_ns[i]);
    }
    PrintKv("arrived_unique", sub->unique());
    PrintKv("arrived_total", sub->total());
    PrintKv("arrived_acked", acked_arrived);
    PrintKv("missing_acked", rec.acked - acked_arrived);
    const double span = last_arrival > 0 ? static_cast<double>(last_arrival - rec.start_ns) / 1e9 : 0;
    PrintKv("forward_elapsed_s", span);
    PrintKv("forward_rate", span > 0 ? static_cast<double>(sub->unique()) / span : 0);
    PrintKv("e2e_p50_ms", Percentile(&latency, 0.50) / 1e6);
    PrintKv("e2e_p99_ms", Percentile(&latency, 0.99) / 1e6);
    PrintKv("e2e_max_ms", Percentile(&latency, 1.0) / 1e6);
  }
  ReportOwnCpu(rec.start_ns);
  return 0;
}

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

void WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return;
  std::fputs(text.c_str(), f);
  std::fclose(f);
  std::rename(tmp.c_str(), path.c_str());
}

std::string SubscriberState(const Subscriber& s) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "unique=%" PRId64 "\ntotal=%" PRId64 "\nforeign=%" PRId64 "\nconnects=%" PRId64
                "\nsubscribed=%d\nfirst_arrival_real_ns=%" PRId64 "\nlast_arrival_real_ns=%" PRId64 "\n",
                s.unique(), s.total(), s.foreign(), s.connects(), s.subscribed() ? 1 : 0, s.first_arrival_real_ns(),
                s.last_arrival_real_ns());
  return buf;
}

int RunSubscriber(const Options& o) {
  if (o.port == 0) Die("--port is required");
  struct sigaction sa{};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  Subscriber sub(o.port, o.sub_topic, o.client_id, o.persistent, o.first, o.count);
  sub.Start();
  const int64_t until = MonoNs() + static_cast<int64_t>(o.duration_s * 1e9);
  bool ready_written = false;
  int64_t last_progress = 0;
  while (!g_stop.load() && MonoNs() < until) {
    if (!ready_written && sub.subscribed() && !o.ready_file.empty()) {
      WriteFileAtomically(o.ready_file, "subscribed\n");
      ready_written = true;
    }
    if (o.exit_when_complete && sub.unique() >= o.count) break;
    const int64_t now = MonoNs();
    if (!o.progress_file.empty() && now - last_progress > 100 * kNsPerMs) {
      WriteFileAtomically(o.progress_file, SubscriberState(sub));
      last_progress = now;
    }
    SleepMs(10);
  }
  sub.Stop();
  if (!o.progress_file.empty()) WriteFileAtomically(o.progress_file, SubscriberState(sub));
  if (!o.arrived_file.empty()) {
    FILE* f = std::fopen(o.arrived_file.c_str(), "w");
    if (f == nullptr) Die("cannot write " + o.arrived_file);
    const std::vector<int64_t>& a = sub.arrival_ns();
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i] != kNotYet) std::fprintf(f, "%" PRId64 "\n", sub.first() + static_cast<int64_t>(i));
    }
    std::fclose(f);
  }
  std::fputs(SubscriberState(sub).c_str(), stdout);
  return 0;
}

std::vector<int64_t> ReadNumbers(const std::string& path) {
  std::vector<int64_t> v;
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) Die("cannot read " + path);
  long long n = 0;
  while (std::fscanf(f, "%lld", &n) == 1) v.push_back(static_cast<int64_t>(n));
  std::fclose(f);
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

int RunCompare(const Options& o) {
  if (o.positional.size() != 2) Die("usage: ws_loadgen compare ACKED_FILE ARRIVED_FILE");
  const std::vector<int64_t> acked = ReadNumbers(o.positional[0]);
  const std::vector<int64_t> arrived = ReadNumbers(o.positional[1]);
  int64_t found = 0;
  for (int64_t n : acked) {
    if (std::binary_search(arrived.begin(), arrived.end(), n)) ++found;
  }
  PrintKv("acked", static_cast<int64_t>(acked.size()));
  PrintKv("acked_arrived", found);
  PrintKv("acked_lost", static_cast<int64_t>(acked.size()) - found);
  PrintKv("arrived", static_cast<int64_t>(arrived.size()));
  return 0;
}

int RunFreePort() {
  Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (!fd.valid() || bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    Die("cannot bind a loopback port");
  }
  std::printf("%u\n", static_cast<unsigned>(ntohs(addr.sin_port)));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = ParseOptions(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  if (o.mode == "free-port") return RunFreePort();
  if (o.mode == "compare") return RunCompare(o);
  mosquitto_lib_init();
  int rc = 2;
  if (o.mode == "http" || o.mode == "mqtt") rc = RunProducers(o);
  else if (o.mode == "sub") rc = RunSubscriber(o);
  else Die("unknown mode " + o.mode);
  std::fflush(stdout);
  mosquitto_lib_cleanup();
  return rc;
}
