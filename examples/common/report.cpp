#include "report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>

#include "lorakeep/error.h"

namespace examples {
namespace {

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t') out += ' ';
        else out += c;
    }
  }
  return out;
}

std::string num(double v, const char* fmt = "%.4g") {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string mib(double bytes) { return num(bytes / (1 << 20), "%.2f") + " MiB"; }

struct Point {
  double step, value;
};

// The value of `metric` logged at `step` (the last one, if several).
std::optional<double> metric_at(const ReportData& d, std::int64_t step) {
  std::optional<double> value;
  for (const auto& e : d.log_history) {
    auto s = e.find("step");
    auto m = e.find(d.metric);
    if (s != e.end() && m != e.end() && static_cast<std::int64_t>(s->second) == step) value = m->second;
  }
  return value;
}

std::string chart(const ReportData& d) {
  std::vector<Point> train, eval;
  for (const auto& e : d.log_history) {
    auto step = e.find("step");
    if (step == e.end()) continue;
    if (auto it = e.find("loss"); it != e.end() && std::isfinite(it->second))
      train.push_back({step->second, it->second});
    if (auto it = e.find(d.metric); it != e.end() && std::isfinite(it->second))
      eval.push_back({step->second, it->second});
  }
  if (train.empty() && eval.empty()) return "<p>Nothing was logged: no training loss, no " + escape(d.metric) + ".</p>";
  std::vector<Reference> refs;
  for (const Reference& r : d.references) {
    if (std::isfinite(r.value)) refs.push_back(r);
  }
  double x1 = 1, y0 = 1e9, y1 = -1e9;
  for (const auto* series : {&train, &eval}) {
    for (const Point& p : *series) {
      x1 = std::max(x1, p.step);
      y0 = std::min(y0, p.value);
      y1 = std::max(y1, p.value);
    }
  }
  for (const Reference& r : refs) y0 = std::min(y0, r.value), y1 = std::max(y1, r.value);
  if (y1 <= y0) y1 = y0 + 1;
  const double pad = (y1 - y0) * 0.08;
  y0 -= pad, y1 += pad;
  // Enough decimals that the six grid labels differ (two at least).
  const int decimals = std::clamp(static_cast<int>(std::ceil(-std::log10((y1 - y0) / 5))), 2, 6);
  const std::string tick_format = "%." + std::to_string(decimals) + "f";
  const int W = 760, H = 340, L = 60, R = 20, T = 20, B = 45;
  auto sx = [&](double s) { return L + s / x1 * (W - L - R); };
  auto sy = [&](double v) { return T + (y1 - v) / (y1 - y0) * (H - T - B); };
  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' role='img' "
      << "aria-label='training loss and " << escape(d.metric) << " per step'>\n";
  svg << "<rect width='100%' height='100%' fill='#fff'/>\n";
  for (int i = 0; i <= 5; ++i) {
    const double v = y0 + (y1 - y0) * i / 5;
    svg << "<line x1='" << L << "' x2='" << W - R << "' y1='" << sy(v) << "' y2='" << sy(v)
        << "' stroke='#eee'/><text x='" << L - 6 << "' y='" << sy(v) + 4 << "' font-size='11' text-anchor='end'>"
        << num(v, tick_format.c_str()) << "</text>\n";
  }
  for (int i = 0; i <= 5; ++i) {
    const double s = x1 * i / 5;
    svg << "<text x='" << sx(s) << "' y='" << H - B + 16 << "' font-size='11' text-anchor='middle'>"
        << static_cast<long long>(s) << "</text>\n";
  }
  svg << "<text x='" << (L + W - R) / 2 << "' y='" << H - 8 << "' font-size='12' text-anchor='middle'>step</text>\n";
  svg << "<line x1='" << L << "' y1='" << T << "' x2='" << L << "' y2='" << H - B << "' stroke='#444'/>\n";
  svg << "<line x1='" << L << "' y1='" << H - B << "' x2='" << W - R << "' y2='" << H - B << "' stroke='#444'/>\n";
  // Saved checkpoints: solid if still on disk, dashed grey if rotated away,
  // thick gold for the best.
  for (std::int64_t step : d.saved_steps) {
    const bool kept = d.kept_steps.count(step) != 0;
    const bool best = d.best_step && *d.best_step == step;
    const char* colour = best ? "#d4a017" : kept ? "#2a7" : "#bbb";
    svg << "<line class='"
        << (best   ? "best"
            : kept ? "kept"
                   : "rotated")
        << "' x1='" << sx(static_cast<double>(step)) << "' x2='" << sx(static_cast<double>(step)) << "' y1='" << T
        << "' y2='" << H - B << "' stroke='" << colour << "' stroke-width='" << (best ? 3 : 1.5) << "'"
        << (kept || best ? "" : " stroke-dasharray='4 3'") << ">"
        << "<title>checkpoint-" << step
        << (best   ? " (best)"
            : kept ? " (kept)"
                   : " (rotated away)")
        << "</title></line>\n";
  }
  auto polyline = [&](const std::vector<Point>& pts, const char* colour, const std::string& label) {
    if (pts.empty()) return;
    svg << "<polyline fill='none' stroke='" << colour << "' stroke-width='2' points='";
    for (const Point& p : pts) svg << sx(p.step) << "," << sy(p.value) << " ";
    svg << "'><title>" << escape(label) << "</title></polyline>\n";
    for (const Point& p : pts) {
      svg << "<circle cx='" << sx(p.step) << "' cy='" << sy(p.value) << "' r='2.5' fill='" << colour << "'/>\n";
    }
  };
  // The reference figures: dashed lines across, each labelled above its line
  // unless that would overlap the label above it (labels at least 13 px apart).
  static const char* const kReferenceColours[] = {"#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22"};
  std::vector<std::size_t> order(refs.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return refs[a].value > refs[b].value; });
  double previous_label_y = -1e9;
  for (std::size_t i : order) {
    const Reference& r = refs[i];
    const char* colour = kReferenceColours[i % (sizeof kReferenceColours / sizeof *kReferenceColours)];
    const double y = sy(r.value);
    const double label_y = std::max(y - 5, previous_label_y + 13);
    previous_label_y = label_y;
    svg << "<line class='reference' x1='" << L << "' x2='" << W - R << "' y1='" << y << "' y2='" << y << "' stroke='"
        << colour << "' stroke-dasharray='2 4'/><text x='" << L + 6 << "' y='" << label_y << "' font-size='11' fill='"
        << colour << "'>" << escape(r.label) << " " << num(r.value) << "</text>\n";
  }
  polyline(train, "#1f77b4", "training loss");
  polyline(eval, "#d62728", d.metric);
  svg << "<g font-size='12'><rect x='" << W - 230 << "' y='" << T + 4 << "' width='205' height='74' fill='#fff' "
      << "stroke='#ccc'/>"
      << "<line x1='" << W - 220 << "' x2='" << W - 196 << "' y1='" << T + 18 << "' y2='" << T + 18
      << "' stroke='#1f77b4' stroke-width='2'/><text x='" << W - 190 << "' y='" << T + 22 << "'>training loss</text>"
      << "<line x1='" << W - 220 << "' x2='" << W - 196 << "' y1='" << T + 34 << "' y2='" << T + 34
      << "' stroke='#d62728' stroke-width='2'/><text x='" << W - 190 << "' y='" << T + 38 << "'>" << escape(d.metric)
      << "</text>"
      << "<line x1='" << W - 208 << "' x2='" << W - 208 << "' y1='" << T + 44 << "' y2='" << T + 56
      << "' stroke='#2a7' stroke-width='1.5'/><line x1='" << W - 200 << "' x2='" << W - 200 << "' y1='" << T + 44
      << "' y2='" << T + 56 << "' stroke='#bbb' stroke-dasharray='4 3'/><text x='" << W - 190 << "' y='" << T + 54
      << "'>checkpoint kept / rotated</text>"
      << "<line x1='" << W - 208 << "' x2='" << W - 208 << "' y1='" << T + 60 << "' y2='" << T + 72
      << "' stroke='#d4a017' stroke-width='3'/><text x='" << W - 190 << "' y='" << T + 70 << "'>best checkpoint</text>"
      << "</g>\n</svg>\n";
  return svg.str();
}

}  // namespace

void write_report(const std::string& path, const ReportData& d) {
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>" << escape(d.title) << "</title>\n"
    << "<style>body{font-family:sans-serif;max-width:820px;margin:24px auto;color:#222}"
    << "table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}"
    << "pre{background:#f6f6f6;padding:10px;white-space:pre-wrap}</style></head><body>\n";
  h << "<h1>" << escape(d.title) << "</h1>\n<p>Configuration: <code>" << escape(d.config_path) << "</code></p>\n";
  h << "<h2>Training curve</h2>\n" << chart(d);
  h << "<h2>Checkpoints</h2>\n<table><tr><th>step</th><th>" << escape(d.metric) << "</th><th>status</th></tr>\n";
  for (std::int64_t step : d.saved_steps) {
    const std::optional<double> value = metric_at(d, step);
    const bool best = d.best_step && *d.best_step == step;
    h << "<tr" << (best ? " style='font-weight:bold;background:#fff6d5'" : "") << "><td>checkpoint-" << step
      << "</td><td>" << (value ? num(*value) : "") << "</td><td>"
      << (best                       ? "best (kept)"
          : d.kept_steps.count(step) ? "kept"
                                     : "rotated away")
      << "</td></tr>\n";
  }
  h << "</table>\n";
  if (d.best_step) {
    const std::optional<double> value = metric_at(d, *d.best_step);
    h << "<p id='best'>Best checkpoint: <b>checkpoint-" << *d.best_step << "</b>, the "
      << (d.greater_is_better ? "highest " : "lowest ") << escape(d.metric)
      << (value ? " (" + num(*value, "%.6g") + ")" : "") << ".</p>\n";
  }
  if (!d.summary.empty()) h << "<p id='summary'>" << escape(d.summary) << "</p>\n";
  if (!d.references.empty()) {
    h << "<h2>Reference figures</h2>\n<table id='references'>";
    for (const Reference& r : d.references) {
      h << "<tr><td>" << escape(r.label) << "</td><td>" << num(r.value, "%.6g") << "</td></tr>";
    }
    h << "</table>\n";
  }
  h << "<h2>Reload at the end of training</h2>\n<table>"
    << "<tr><td>adapter bytes read</td><td>" << mib(static_cast<double>(d.reload_bytes)) << "</td></tr>"
    << "<tr><td>time</td><td>" << num(d.reload_seconds * 1000, "%.2f") << " ms</td></tr>"
    << "<tr><td>peak extra bytes on the parameters' allocator</td><td>" << d.reload_peak_device_bytes << " B</td></tr>"
    << "<tr><td>what a full temporary copy would have allocated</td><td>"
    << mib(static_cast<double>(d.naive_device_bytes)) << "</td></tr>"
    << "<tr><td>peak extra process RSS</td><td>"
    << mib(static_cast<double>(std::max<std::int64_t>(0, d.reload_peak_rss_bytes))) << "</td></tr></table>\n";
  if (!d.sample.empty()) h << "<h2>A sample from the fine-tuned model</h2>\n<pre>" << escape(d.sample) << "</pre>\n";
  h << "</body></html>\n";
  const std::string text = h.str();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) throw lorakeep::Error(lorakeep::ErrorCode::kIOError, "cannot write report '" + tmp + "'");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    throw lorakeep::Error(lorakeep::ErrorCode::kIOError, "cannot rename '" + tmp + "' to '" + path + "'");
  }
}

}  // namespace examples
