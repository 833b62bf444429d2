// libFuzzer target: the configuration parser (check-config, start, SIGHUP
// reload and remote config.set all feed it). An accepted file must also pass
// ValidateConfig on its own, and a rejection must say why.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "adapters/json/json_codec.h"
#include "tests/fuzz/fuzz_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  ws::Config config;
  std::vector<std::string> errors;
  bool ok = ws::ParseConfig(in, &config, &errors);
  if (ok != errors.empty()) ws::fuzz::Fail("ParseConfig's answer and its reasons disagree", "", in);
  if (ok) {
    std::vector<std::string> again;
    if (!ws::ValidateConfig(config, &again)) ws::fuzz::Fail("accepted config fails validation", again.front(), in);
    (void)ws::ExpandTopicPrefix(config);
  }
  return 0;
}
