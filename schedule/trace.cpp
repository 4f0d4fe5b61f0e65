// Chrome trace JSON (the "JSON Array/Object Format" of the Trace Event Format).
#include <cstdio>
#include <cstdlib>
#include <map>
#include <utility>

#include "common/check.h"
#include "schedule/json_text.h"
#include "schedule/trace.h"

namespace stp::schedule {

namespace {

constexpr int kTidCompute = 0;
constexpr int kTidP2P = 1;
constexpr int kTidOffload = 2;
constexpr int kTidReload = 3;
constexpr double kMicros = 1e6;  // trace timestamps are microseconds; our times are seconds

// Six significant digits, as the trace has always carried them.
double num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return std::strtod(buf, nullptr);
}

std::string parts_text(const std::vector<Part>& parts) {
  std::string s;
  for (const Part& p : parts)
    s += (s.empty() ? "" : ",") + to_string(p) + " s" + std::to_string(p.stage);
  return s;
}

OrderedJson slice(const std::string& name, const char* cat, int pid, int tid, double start,
                  double end, OrderedJson args) {
  return {{"name", name},
          {"cat", cat},
          {"ph", "X"},
          {"ts", num(start * kMicros)},
          {"dur", num((end - start) * kMicros)},
          {"pid", pid},
          {"tid", tid},
          {"args", std::move(args)}};
}

OrderedJson meta(const char* what, int pid, int tid, const std::string& name) {
  OrderedJson ev = {{"name", what}, {"ph", "M"}, {"pid", pid}};
  if (tid >= 0) ev["tid"] = tid;
  ev["args"] = {{"name", name}};
  return ev;
}

}  // namespace

std::string to_chrome_trace(const std::vector<Timeline>& timelines) {
  OrderedJson events = OrderedJson::array();
  int pid_base = 0;
  int flow_id = 0;
  for (const Timeline& tl : timelines) {
    for (int r = 0; r < tl.p; ++r) {
      const int pid = pid_base + r + 1;
      events.push_back(meta("process_name", pid, -1, str_cat(tl.title, " rank ", r)));
      events.push_back(meta("process_sort_index", pid, -1, std::to_string(pid)));
      events.push_back(meta("thread_name", pid, kTidCompute, "compute"));
      events.push_back(meta("thread_name", pid, kTidP2P, "p2p (sent)"));
      events.push_back(meta("thread_name", pid, kTidOffload, "offload D2H"));
      events.push_back(meta("thread_name", pid, kTidReload, "reload H2D"));
    }
    std::map<std::pair<int, int>, const TimelineEvent*> reloads;  // (rank, index)
    for (const TimelineEvent& ev : tl.events)
      if (ev.category == kCategoryReload) reloads[{ev.rank, ev.index}] = &ev;
    for (const TimelineEvent& ev : tl.events) {
      const int pid = pid_base + ev.rank + 1;
      const OrderedJson args = {{"index", ev.index}, {"parts", parts_text(ev.parts)}};
      if (ev.category == kCategoryCompute) {
        double t = ev.start;
        if (ev.p2p_wait > 0) {
          events.push_back(slice("wait p2p", "wait", pid, kTidCompute, t, t + ev.p2p_wait, args));
          t += ev.p2p_wait;
        }
        if (ev.reload_wait > 0) {
          // A reload wait names the reload it waited for, and a flow arrow joins the two.
          auto it = reloads.find({ev.rank, ev.reload_index});
          OrderedJson wait_args = args;
          if (it != reloads.end()) wait_args["reload"] = it->second->name;
          events.push_back(
              slice("wait reload", "wait", pid, kTidCompute, t, t + ev.reload_wait, wait_args));
          if (it != reloads.end()) {
            const int id = ++flow_id;
            events.push_back({{"name", "reload wait"},
                              {"cat", "wait"},
                              {"ph", "s"},
                              {"id", id},
                              {"ts", num(it->second->start * kMicros)},
                              {"pid", pid},
                              {"tid", kTidReload}});
            events.push_back({{"name", "reload wait"},
                              {"cat", "wait"},
                              {"ph", "f"},
                              {"bp", "e"},
                              {"id", id},
                              {"ts", num(t * kMicros)},
                              {"pid", pid},
                              {"tid", kTidCompute}});
          }
        }
        OrderedJson compute_args = args;
        compute_args["tp_wait"] = num(ev.tp_wait);
        events.push_back(slice(ev.name, kCategoryCompute, pid, kTidCompute, ev.compute_start(),
                               ev.end, std::move(compute_args)));
      } else {
        const int tid = ev.category == kCategoryP2P       ? kTidP2P
                        : ev.category == kCategoryOffload ? kTidOffload
                                                          : kTidReload;
        events.push_back(slice(ev.name, ev.category.c_str(), pid, tid, ev.start, ev.end, args));
      }
    }
    pid_base += tl.p;
  }
  const OrderedJson doc = {{"displayTimeUnit", "ms"}, {"traceEvents", std::move(events)}};
  return json_text(doc, /*wrap_depth=*/2) + "\n";  // one event per line
}

}  // namespace stp::schedule
