// SVG pictures of timelines in the style of the paper's schedule figures (trace.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>
#include <utility>

#include "common/check.h"
#include "common/svg_chart.h"
#include "schedule/trace.h"

namespace stp::schedule {

namespace {

constexpr double kLeft = 48;            // px for the rank labels
constexpr double kRight = 12;           // px right margin
constexpr double kTitle = 20;           // px for a section's title line
constexpr double kRowGap = 4;           // px between ranks
constexpr double kAxis = 22;            // px for the time axis under a section
constexpr double kSectionGap = 14;      // px between sections
constexpr double kTransferShare = 0.6;  // transfer row height / compute row height

struct Colors {
  const char* dark;   // chunk 0
  const char* light;  // chunk 1 (and higher)
};
constexpr Colors kF{"#1a9850", "#a6d96a"};
constexpr Colors kB{"#2166ac", "#92c5de"};
constexpr Colors kW{"#d6604d", "#f4a582"};
constexpr const char* kExposed = "#bdbdbd";
constexpr const char* kOffload = "#1b9e9e";
constexpr const char* kReload = "#7b3294";
constexpr const char* kReloadWait = "#e31a1c";  // a compute block waiting for its reload

const char* fill(Pass pass, int chunk) {
  const Colors& c = pass == Pass::kF ? kF : (pass == Pass::kW ? kW : kB);
  return chunk == 0 ? c.dark : c.light;
}

std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", x);
  return buf;
}

class Writer {
 public:
  Writer(const std::vector<Timeline>& tls, const SvgOptions& opt) : tls_(tls), opt_(opt) {
    STP_CHECK(opt.width_px > 0 && opt.row_height > 0, "svg width_px=", opt.width_px,
              " and row_height=", opt.row_height, " must be > 0");
    for (const Timeline& tl : tls)
      for (const TimelineEvent& ev : tl.events) t_max_ = std::max(t_max_, ev.end);
    if (t_max_ <= 0) t_max_ = 1;
    scale_ = opt.width_px / t_max_;
  }

  std::string write() {
    double y = 8;
    for (const Timeline& tl : tls_) y = section(tl, y) + kSectionGap;
    y = legend(y);
    std::ostringstream head;
    head << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\""
         << num(kLeft + opt_.width_px + kRight) << "\" height=\"" << num(y + 8)
         << "\" font-family=\"Helvetica, Arial, sans-serif\">\n"
         << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    return head.str() + body_.str() + "</svg>\n";
  }

 private:
  double x(double t) const { return kLeft + t * scale_; }

  void rect(double x0, double y0, double w, double h, const char* color, const char* extra = "") {
    body_ << "<rect x=\"" << num(x0) << "\" y=\"" << num(y0) << "\" width=\""
          << num(std::max(w, 0.0)) << "\" height=\"" << num(h) << "\" fill=\"" << color << "\""
          << extra << "/>\n";
  }

  void text(double x0, double y0, double size, const char* color, const std::string& s,
            const char* anchor = "middle") {
    body_ << "<text x=\"" << num(x0) << "\" y=\"" << num(y0) << "\" font-size=\"" << num(size)
          << "\" fill=\"" << color << "\" text-anchor=\"" << anchor
          << "\" dominant-baseline=\"central\">" << xml_escape(s) << "</text>\n";
  }

  // One pass's share of a block: its colour, a salmon strip when W is fused, the microbatch.
  void part_box(const Part& part, double x0, double x1, double y0, double h) {
    rect(x0, y0, x1 - x0, h, fill(part.pass, part.chunk));
    if (part.pass == Pass::kBW)
      rect(x0, y0 + h * 0.75, x1 - x0, h * 0.25, fill(Pass::kW, part.chunk));
    const double size = std::min(h * 0.62, 12.0);
    const std::string label = std::to_string(part.mb);
    if (opt_.mb_labels && x1 - x0 >= size * 0.62 * label.size() + 2)
      text((x0 + x1) / 2, y0 + (part.pass == Pass::kBW ? h * 0.38 : h / 2), size,
           part.chunk == 0 ? "white" : "black", label);
  }

  // A reload wait: the interval the block waited, in red on its row, and when the reload it
  // waited for is on the copy row (measured timelines name it: reload_index), a red line from
  // that copy's end to the start of the compute, so a late reload is seen at a glance.
  void reload_wait(const TimelineEvent& ev, double y0, double h, const TimelineEvent* reload,
                   double reload_y) {
    const double x0 = x(ev.start + ev.p2p_wait), x1 = x(ev.compute_start());
    body_ << "<g class=\"reload-wait\"><title>" << xml_escape(ev.name) << " waited "
          << num(ev.reload_wait * 1e3) << " ms"
          << (reload ? xml_escape(str_cat(" for ", reload->name)) : std::string()) << "</title>\n";
    rect(x0, y0 + h * 0.35, x1 - x0, h * 0.3, kReloadWait);
    if (reload && x1 - x0 >= 0.5)
      body_ << "<line x1=\"" << num(x(reload->end)) << "\" y1=\"" << num(reload_y) << "\" x2=\""
            << num(x1) << "\" y2=\"" << num(y0 + h) << "\" stroke=\"" << kReloadWait
            << "\" stroke-width=\"1.2\"/>\n";
    body_ << "</g>\n";
  }

  void compute_block(const TimelineEvent& ev, double y0, double h) {
    const double x0 = x(ev.compute_start());
    const double x_end = x(ev.end);
    const double x_work = x(std::max(ev.compute_start(), ev.end - ev.tp_wait));
    body_ << "<g class=\"" << (ev.parts.size() == 2 ? "braid" : "block") << "\"><title>"
          << xml_escape(ev.name) << "</title>\n";
    if (ev.parts.size() == 2) {  // braided: the two passes as halves of one outlined block
      part_box(ev.parts[0], x0, x_work, y0, h / 2);
      part_box(ev.parts[1], x0, x_work, y0 + h / 2, h / 2);
    } else if (!ev.parts.empty()) {
      part_box(ev.parts[0], x0, x_work, y0, h);
    }
    if (x_end > x_work) rect(x_work, y0, x_end - x_work, h, kExposed);
    rect(x0, y0, x_end - x0, h, "none",
         ev.parts.size() == 2 ? " stroke=\"#111\" stroke-width=\"1.2\""
                              : " stroke=\"white\" stroke-width=\"0.5\"");
    body_ << "</g>\n";
  }

  double section(const Timeline& tl, double y) {
    text(kLeft, y + kTitle / 2, 13, "#111", tl.title, "start");
    y += kTitle;
    const double h = opt_.row_height;
    std::vector<bool> transfers(tl.p, false);
    for (const TimelineEvent& ev : tl.events)
      if (ev.category == kCategoryOffload || ev.category == kCategoryReload)
        transfers[ev.rank] = true;
    std::vector<double> row_y(tl.p);
    for (int r = 0; r < tl.p; ++r) {
      row_y[r] = y;
      rect(kLeft, y, opt_.width_px, h, "#f4f4f4");
      text(kLeft - 6, y + h / 2, 12, "#111", "r" + std::to_string(r), "end");
      y += h;
      if (transfers[r]) {
        rect(kLeft, y + 1, opt_.width_px, h * kTransferShare - 1, "#fafafa");
        text(kLeft - 6, y + h * kTransferShare / 2, 9, "#555", "copy", "end");
        y += h * kTransferShare;
      }
      y += kRowGap;
    }
    std::map<std::pair<int, int>, const TimelineEvent*> reloads;  // (rank, index)
    for (const TimelineEvent& ev : tl.events)
      if (ev.category == kCategoryReload) reloads[{ev.rank, ev.index}] = &ev;
    for (const TimelineEvent& ev : tl.events) {
      if (ev.rank < 0 || ev.rank >= tl.p) continue;
      if (ev.category == kCategoryCompute) {
        compute_block(ev, row_y[ev.rank], h);
        if (ev.reload_wait > 0) {
          auto it = reloads.find({ev.rank, ev.reload_index});
          const TimelineEvent* reload = it == reloads.end() ? nullptr : it->second;
          reload_wait(ev, row_y[ev.rank], h, reload, row_y[ev.rank] + h * (1 + kTransferShare));
        }
      } else if (ev.category == kCategoryOffload || ev.category == kCategoryReload) {
        const bool off = ev.category == kCategoryOffload;
        const double lane = h * kTransferShare / 2;
        const double y0 = row_y[ev.rank] + h + 1 + (off ? 0 : lane);
        body_ << "<g class=\"" << ev.category << "\"><title>" << xml_escape(ev.name)
              << "</title>\n";
        rect(x(ev.start), y0, x(ev.end) - x(ev.start), lane - 1, off ? kOffload : kReload,
             " stroke=\"white\" stroke-width=\"0.5\"");
        const std::string label = ev.parts.empty() ? "" : std::to_string(ev.parts[0].mb);
        if (opt_.mb_labels && x(ev.end) - x(ev.start) >= 6.0 * label.size() + 2)
          text((x(ev.start) + x(ev.end)) / 2, y0 + (lane - 1) / 2, std::min(lane * 0.8, 10.0),
               "white", label);
        body_ << "</g>\n";
      }
    }
    axis(y);
    return y + kAxis;
  }

  void axis(double y) {
    body_ << "<line x1=\"" << num(kLeft) << "\" y1=\"" << num(y) << "\" x2=\""
          << num(kLeft + opt_.width_px) << "\" y2=\"" << num(y) << "\" stroke=\"#555\"/>\n";
    const double raw = t_max_ / 10;
    const double mag = std::pow(10.0, std::floor(std::log10(raw)));
    const double step = raw / mag < 2 ? 2 * mag : raw / mag < 5 ? 5 * mag : 10 * mag;
    for (double t = 0; t <= t_max_ * 1.0001; t += step) {
      body_ << "<line x1=\"" << num(x(t)) << "\" y1=\"" << num(y) << "\" x2=\"" << num(x(t))
            << "\" y2=\"" << num(y + 4) << "\" stroke=\"#555\"/>\n";
      char buf[32];
      std::snprintf(buf, sizeof buf, "%g", t);
      text(x(t), y + 12, 9, "#555", buf);
    }
  }

  double legend(double y) {
    struct Item {
      const char* color;
      const char* label;
    };
    const Item items[] = {{kF.dark, "F chunk 0"},   {kF.light, "F chunk 1"},
                          {kB.dark, "B chunk 0"},   {kB.light, "B chunk 1"},
                          {kW.dark, "W chunk 0"},   {kW.light, "W chunk 1"},
                          {kExposed, "exposed TP"}, {kOffload, "offload"},
                          {kReload, "reload"},      {kReloadWait, "reload wait"}};
    double x0 = kLeft;
    for (const Item& it : items) {
      rect(x0, y, 14, 12, it.color);
      text(x0 + 18, y + 6, 10, "#111", it.label, "start");
      x0 += 100;
    }
    text(x0, y + 6, 10, "#111", "outlined pair = braided block; strip = W fused", "start");
    return y + 16;
  }

  const std::vector<Timeline>& tls_;
  const SvgOptions& opt_;
  double t_max_ = 0;
  double scale_ = 1;
  std::ostringstream body_;
};

}  // namespace

std::string to_svg(const std::vector<Timeline>& timelines, const SvgOptions& options) {
  return Writer(timelines, options).write();
}

}  // namespace stp::schedule
