// Chrome trace JSON (the "JSON Array/Object Format" of the Trace Event Format).
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "common/check.h"
#include "schedule/json.h"
#include "schedule/trace.h"

namespace stp::schedule {

namespace {

constexpr int kTidCompute = 0;
constexpr int kTidP2P = 1;
constexpr int kTidOffload = 2;
constexpr int kTidReload = 3;
constexpr double kMicros = 1e6;  // trace timestamps are microseconds; our times are seconds

std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}

std::string parts_text(const std::vector<Part>& parts) {
  std::string s;
  for (const Part& p : parts)
    s += (s.empty() ? "" : ",") + to_string(p) + " s" + std::to_string(p.stage);
  return s;
}

void slice(std::ostringstream& os, bool& first, const std::string& name, const char* cat, int pid,
           int tid, double start, double end, const std::string& args) {
  os << (first ? "\n" : ",\n") << "{\"name\": " << json::quote(name) << ", \"cat\": \"" << cat
     << "\", \"ph\": \"X\", \"ts\": " << num(start * kMicros)
     << ", \"dur\": " << num((end - start) * kMicros) << ", \"pid\": " << pid
     << ", \"tid\": " << tid << ", \"args\": {" << args << "}}";
  first = false;
}

void meta(std::ostringstream& os, bool& first, const char* what, int pid, int tid,
          const std::string& name) {
  os << (first ? "\n" : ",\n") << "{\"name\": \"" << what << "\", \"ph\": \"M\", \"pid\": " << pid;
  if (tid >= 0) os << ", \"tid\": " << tid;
  os << ", \"args\": {\"name\": " << json::quote(name) << "}}";
  first = false;
}

}  // namespace

std::string to_chrome_trace(const std::vector<Timeline>& timelines) {
  std::ostringstream os;
  os << "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [";
  bool first = true;
  int pid_base = 0;
  for (const Timeline& tl : timelines) {
    for (int r = 0; r < tl.p; ++r) {
      const int pid = pid_base + r + 1;
      meta(os, first, "process_name", pid, -1, str_cat(tl.title, " rank ", r));
      meta(os, first, "process_sort_index", pid, -1, std::to_string(pid));
      meta(os, first, "thread_name", pid, kTidCompute, "compute");
      meta(os, first, "thread_name", pid, kTidP2P, "p2p (sent)");
      meta(os, first, "thread_name", pid, kTidOffload, "offload D2H");
      meta(os, first, "thread_name", pid, kTidReload, "reload H2D");
    }
    for (const TimelineEvent& ev : tl.events) {
      const int pid = pid_base + ev.rank + 1;
      const std::string args =
          str_cat("\"index\": ", ev.index, ", \"parts\": ", json::quote(parts_text(ev.parts)));
      if (ev.category == kCategoryCompute) {
        double t = ev.start;
        if (ev.p2p_wait > 0) {
          slice(os, first, "wait p2p", "wait", pid, kTidCompute, t, t + ev.p2p_wait, args);
          t += ev.p2p_wait;
        }
        if (ev.reload_wait > 0)
          slice(os, first, "wait reload", "wait", pid, kTidCompute, t, t + ev.reload_wait, args);
        slice(os, first, ev.name, kCategoryCompute, pid, kTidCompute, ev.compute_start(), ev.end,
              str_cat(args, ", \"tp_wait\": ", num(ev.tp_wait)));
      } else {
        const int tid = ev.category == kCategoryP2P       ? kTidP2P
                        : ev.category == kCategoryOffload ? kTidOffload
                                                          : kTidReload;
        slice(os, first, ev.name, ev.category.c_str(), pid, tid, ev.start, ev.end, args);
      }
    }
    pid_base += tl.p;
  }
  os << "\n]}\n";
  return os.str();
}

}  // namespace stp::schedule
