// Trace writers: a Timeline (simulated or measured, schedule/timeline.h) as
//  - Chrome trace JSON (chrome://tracing, https://ui.perfetto.dev): a process per rank with a
//    compute thread (waits shown as their own slices), a P2P thread and D2H / H2D threads;
//  - SVG in the style of the paper's figures: a row per rank, a colour per pass (F green,
//    B blue, W salmon) with a lighter shade for chunk 1, braided blocks drawn as two halves
//    inside one outline, microbatch numbers in the blocks, exposed TP time as a grey tail, and
//    a transfer row under each rank that offloads (D2H teal above, H2D purple below).
// Several timelines (e.g. one per schedule kind) stack in one picture / trace.
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <vector>

#include "schedule/timeline.h"

namespace stp::schedule {

std::string to_chrome_trace(const std::vector<Timeline>& timelines);
inline std::string to_chrome_trace(const Timeline& timeline) {
  return to_chrome_trace(std::vector<Timeline>{timeline});
}

struct SvgOptions {
  double width_px = 1600;  // width of the longest timeline's time axis, > 0
  double row_height = 26;  // height of a rank's compute row in px, > 0
  bool mb_labels = true;   // microbatch numbers inside blocks wide enough to hold them
};

std::string to_svg(const std::vector<Timeline>& timelines, const SvgOptions& options = {});
inline std::string to_svg(const Timeline& timeline, const SvgOptions& options = {}) {
  return to_svg(std::vector<Timeline>{timeline}, options);
}

}  // namespace stp::schedule
