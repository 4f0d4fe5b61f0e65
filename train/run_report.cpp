#include "train/run_report.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "common/bytes.h"
#include "common/check.h"
#include "common/file.h"
#include "common/svg_chart.h"
#include "schedule/simulate.h"
#include "schedule/trace.h"

namespace stp::train {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::string human_rate(double r) {
  char buf[32];
  if (r >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2fM", r / 1e6);
  else if (r >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1fk", r / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", r);
  return buf;
}

std::string progress_line(const StepMetrics& m, std::int64_t total) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "step %*lld/%lld | loss %.4f | %s tok/s | %.3f s/step | comm %4.1f%% | "
                "pp idle %4.1f%% | act peak %s | offload %s",
                static_cast<int>(std::to_string(total).size()), static_cast<long long>(m.step),
                static_cast<long long>(total), m.loss, human_rate(m.tokens_per_s).c_str(),
                m.seconds, 100 * m.exposed_comm, 100 * m.pp_idle,
                format_bytes(static_cast<double>(m.peak_activation_bytes), 1).c_str(),
                format_bytes(static_cast<double>(m.offloaded_bytes), 1).c_str());
  return buf;
}

// The summary's device memory line: the allocator's peaks, or that there are none.
std::string device_memory_line(std::int64_t allocated, std::int64_t reserved) {
  if (allocated < 0)
    return "device memory: no allocator statistics on the CPU (the activation peak above is the "
           "store's count)\n";
  return str_cat("device memory (caching allocator, peak per step): ",
                 format_bytes(static_cast<double>(allocated), 1), " allocated, ",
                 format_bytes(static_cast<double>(reserved), 1), " reserved\n");
}

json event_json(const schedule::TimelineEvent& e) {
  json parts = json::array();
  for (const auto& p : e.parts)
    parts.push_back({{"pass", schedule::to_string(p.pass)},
                     {"chunk", p.chunk},
                     {"stage", p.stage},
                     {"mb", p.mb}});
  return {{"rank", e.rank},
          {"index", e.index},
          {"name", e.name},
          {"category", e.category},
          {"op", schedule::to_string(e.op)},
          {"parts", parts},
          {"start", e.start},
          {"end", e.end},
          {"p2p_wait", e.p2p_wait},
          {"reload_wait", e.reload_wait},
          {"tp_wait", e.tp_wait},
          {"reload_index", e.reload_index}};
}

schedule::Pass pass_from(const std::string& s) {
  for (auto p : {schedule::Pass::kF, schedule::Pass::kB, schedule::Pass::kW, schedule::Pass::kBW})
    if (s == schedule::to_string(p)) return p;
  STP_CHECK(false, "unknown pass '", s, "' in a timeline file");
}

schedule::Op op_from(const std::string& s) {
  using schedule::Op;
  for (auto o : {Op::kF, Op::kB, Op::kW, Op::kBW, Op::kFF, Op::kFB, Op::kFW, Op::kSendF, Op::kRecvF,
                 Op::kSendB, Op::kRecvB, Op::kOffload, Op::kReload})
    if (s == schedule::to_string(o)) return o;
  STP_CHECK(false, "unknown op '", s, "' in a timeline file");
}

}  // namespace

std::string to_json_line(const StepMetrics& m) {
  json j = {{"step", m.step},
            {"loss", m.loss},
            {"lr", m.lr},
            {"grad_norm", m.grad_norm},
            {"step_seconds", m.seconds},
            {"tokens_per_s", m.tokens_per_s},
            {"exposed_comm", m.exposed_comm},
            {"pp_idle", m.pp_idle},
            {"reload_wait", m.reload_wait},
            {"peak_activation_bytes", m.peak_activation_bytes},
            {"offloaded_bytes", m.offloaded_bytes}};
  // The device allocator's peaks, or null where no allocator tells (the CPU).
  auto bytes_or_null = [](std::int64_t b) { return b < 0 ? json(nullptr) : json(b); };
  j["device_allocated_peak_bytes"] = bytes_or_null(m.device_allocated_peak_bytes);
  j["device_reserved_peak_bytes"] = bytes_or_null(m.device_reserved_peak_bytes);
  return j.dump();
}

schedule::CostModel fit_costs(const std::vector<schedule::TimelineEvent>& events, int stages) {
  std::map<schedule::Op, std::pair<double, int>> busy;  // op -> (sum, count) of compute time
  double ar = 0;
  int ar_n = 0;
  for (const auto& e : events) {
    if (e.category != schedule::kCategoryCompute) continue;
    double compute = e.end - e.start - e.p2p_wait - e.reload_wait - e.tp_wait;
    auto& [sum, n] = busy[e.op];
    sum += std::max(0.0, compute);
    ++n;
    if (e.op == schedule::Op::kF) {
      ar += e.tp_wait;
      ++ar_n;
    }
  }
  auto mean = [&](schedule::Op op) {
    auto it = busy.find(op);
    return it == busy.end() || it->second.second == 0 ? -1.0 : it->second.first / it->second.second;
  };
  schedule::CostModel c;
  double f = mean(schedule::Op::kF), b = mean(schedule::Op::kB), w = mean(schedule::Op::kW),
         bw = mean(schedule::Op::kBW);
  c.t_f = f > 0 ? f : 1e-3;
  c.t_w = w > 0 ? w : (bw > 0 ? bw / 2 : c.t_f);
  c.t_b = b > 0 ? b : (bw > 0 ? std::max(bw - c.t_w, 0.0) : c.t_f);
  c.t_ar = ar_n ? ar / ar_n : 0;
  (void)stages;
  return c;
}

RunReport::RunReport(std::string log_dir, std::int64_t total_steps, bool enabled, bool live_bar,
                     Say say)
    : log_dir_(std::move(log_dir)),
      total_steps_(total_steps),
      enabled_(enabled),
      live_bar_(live_bar),
      say_(say ? std::move(say) : [](const std::string&) {}) {
  if (!enabled_) return;
  fs::create_directories(log_dir_);
  std::string path = log_dir_ + "/metrics.jsonl";
  jsonl_ = std::fopen(path.c_str(), "a");
  STP_CHECK(jsonl_ != nullptr, "cannot write ", path, " (run.log_dir)");
}

void RunReport::step(const StepMetrics& m) {
  history_.push_back(m);
  if (!enabled_) return;
  std::fprintf(jsonl_, "%s\n", to_json_line(m).c_str());
  std::fflush(jsonl_);
  const std::int64_t every = std::max<std::int64_t>(1, total_steps_ / 25);
  if (live_bar_) {
    say_("\r" + progress_line(m, total_steps_) + (m.step == total_steps_ ? "\n" : ""));
  } else if (m.step % every == 0 || m.step == total_steps_ || history_.size() == 1) {
    say_(progress_line(m, total_steps_) + "\n");
  }
}

void RunReport::finish(const std::string& title) {
  if (!enabled_) return;
  if (jsonl_) {
    std::fclose(jsonl_);
    jsonl_ = nullptr;
  }
  if (history_.empty()) return;
  LineChart chart;
  chart.title = title;
  chart.x_label = "step";
  ChartSeries loss, tps;
  loss.name = "loss";
  tps.name = "tokens/s";
  for (const auto& m : history_) {
    loss.x.push_back(static_cast<double>(m.step));
    loss.y.push_back(m.loss);
    tps.x.push_back(static_cast<double>(m.step));
    tps.y.push_back(m.tokens_per_s);
  }
  chart.panels.push_back({"loss", {loss}, false});
  chart.panels.push_back({"tokens/s", {tps}, true});
  write_file(log_dir_ + "/training.svg", to_svg(chart));
  // Summary over the steps after the first (which includes planning and warm-up).
  std::size_t from = history_.size() > 1 ? 1 : 0;
  double secs = 0, tokens_rate = 0, comm = 0, idle = 0;
  std::int64_t peak = 0, off = 0, dev_alloc = -1, dev_reserved = -1;
  for (std::size_t i = from; i < history_.size(); ++i) {
    dev_alloc = std::max(dev_alloc, history_[i].device_allocated_peak_bytes);
    dev_reserved = std::max(dev_reserved, history_[i].device_reserved_peak_bytes);
    secs += history_[i].seconds;
    tokens_rate += history_[i].tokens_per_s;
    comm += history_[i].exposed_comm;
    idle += history_[i].pp_idle;
    peak = std::max(peak, history_[i].peak_activation_bytes);
    off = std::max(off, history_[i].offloaded_bytes);
  }
  const double n = static_cast<double>(history_.size() - from);
  char line[512];
  std::snprintf(line, sizeof line,
                "done: %lld steps, loss %.4f -> %.4f, %s tok/s, %.3f s/step, exposed comm %.1f%%, "
                "pp idle %.1f%%, activation peak %s, offloaded %s/step\n",
                static_cast<long long>(history_.back().step), history_.front().loss,
                history_.back().loss, human_rate(tokens_rate / n).c_str(), secs / n, 100 * comm / n,
                100 * idle / n, format_bytes(static_cast<double>(peak), 1).c_str(),
                format_bytes(static_cast<double>(off), 1).c_str());
  say_(line);
  say_(device_memory_line(dev_alloc, dev_reserved));
  say_(str_cat("wrote ", log_dir_, "/metrics.jsonl, ", log_dir_, "/training.svg\n"));
}

void write_rank_events(const std::string& dir, int rank,
                       const std::vector<schedule::TimelineEvent>& events) {
  fs::create_directories(dir);
  json arr = json::array();
  for (const auto& e : events) arr.push_back(event_json(e));
  write_file(dir + "/rank_" + std::to_string(rank) + ".json", arr.dump());
}

std::vector<schedule::TimelineEvent> read_rank_events(const std::string& dir, int ranks) {
  std::vector<schedule::TimelineEvent> out;
  for (int r = 0; r < ranks; ++r) {
    std::string path = dir + "/rank_" + std::to_string(r) + ".json";
    std::ifstream in(path);
    STP_CHECK(in.good(), "missing timeline file ", path);
    json arr = json::parse(in);
    for (const auto& j : arr) {
      schedule::TimelineEvent e;
      e.rank = j.at("rank");
      e.index = j.at("index");
      e.name = j.at("name");
      e.category = j.at("category");
      e.op = op_from(j.at("op"));
      for (const auto& p : j.at("parts"))
        e.parts.push_back({pass_from(p.at("pass")), p.at("chunk"), p.at("stage"), p.at("mb")});
      e.start = j.at("start");
      e.end = j.at("end");
      e.p2p_wait = j.at("p2p_wait");
      e.reload_wait = j.at("reload_wait");
      e.tp_wait = j.at("tp_wait");
      e.reload_index = j.value("reload_index", -1);
      out.push_back(std::move(e));
    }
  }
  return out;
}

void write_timelines(const std::string& log_dir, const schedule::Program& program,
                     const std::vector<schedule::TimelineEvent>& measured,
                     const std::string& title) {
  schedule::Timeline real;
  real.title = "measured: " + title;
  real.p = program.p;
  real.events = measured;
  schedule::CostModel costs = fit_costs(measured, program.stages());
  // The simulated copies last as long as the measured ones did on average, so the two copy
  // lanes compare (the cost model's host link is otherwise free).
  double copy_seconds = 0;
  int copies = 0;
  for (const auto& e : measured) {
    if (e.category != schedule::kCategoryOffload && e.category != schedule::kCategoryReload)
      continue;
    copy_seconds += e.end - e.start;
    ++copies;
  }
  if (copies > 0) costs.host_latency = copy_seconds / copies;
  schedule::SimOptions so;
  so.record_timeline = true;
  schedule::Timeline predicted = schedule::simulate(program, costs, so).timeline;
  predicted.title = "simulated with the measured pass times: " + title;
  write_file(log_dir + "/timeline.svg", schedule::to_svg({real, predicted}));
  write_file(log_dir + "/timeline.json", schedule::to_chrome_trace({real, predicted}));
}

}  // namespace stp::train
