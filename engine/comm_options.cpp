#include "engine/comm_options.h"

#include "common/check.h"

namespace stp::engine {

CommBackend comm_backend_from_string(const std::string& text, const std::string& what) {
  for (CommBackend b : {CommBackend::kAuto, CommBackend::kGloo, CommBackend::kNccl})
    if (text == to_string(b)) return b;
  STP_CHECK(false, what, "='", text, "' is unknown; use auto, gloo or nccl");
  return CommBackend::kAuto;
}

}  // namespace stp::engine
