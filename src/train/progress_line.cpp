#include "train/progress_line.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace moe {
namespace {

// "1h05m" from an hour on, "4m02s" below.
std::string format_duration(double seconds) {
  char buf[32];
  const int s = static_cast<int>(std::max(0.0, seconds));
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", s / 3600, s / 60 % 60);
  else
    std::snprintf(buf, sizeof buf, "%dm%02ds", s / 60, s % 60);
  return buf;
}

}  // namespace

std::string format_progress_line(int64_t step, int64_t steps, double loss, float lr, double tok_s,
                                 double eta_s, int width) {
  char buf[4][64];
  std::snprintf(buf[0], sizeof buf[0], "step %lld/%lld", static_cast<long long>(step),
                static_cast<long long>(steps));
  std::snprintf(buf[1], sizeof buf[1], "train loss %.4f", loss);
  std::snprintf(buf[2], sizeof buf[2], "lr %.2e", lr);
  std::snprintf(buf[3], sizeof buf[3], "%.0f tok/s", tok_s);
  std::string fields[5] = {buf[0], buf[1], buf[2], buf[3], "ETA " + format_duration(eta_s)};
  auto joined = [&] {
    std::string line;
    for (const std::string& f : fields)
      if (!f.empty()) line.append(line.empty() ? "" : "  ").append(f);
    return line;
  };
  const size_t limit = static_cast<size_t>(std::max(width - 1, 20));
  for (int dropped : {3, 2, 4})  // tok/s, then lr, then the ETA
    if (joined().size() > limit) fields[dropped].clear();
  std::string line = joined();
  const int64_t room = static_cast<int64_t>(limit) - static_cast<int64_t>(line.size()) - 3;
  if (room >= 8) {
    const int64_t bar = std::min<int64_t>(40, room);
    const int64_t filled = bar * step / std::max<int64_t>(steps, 1);
    std::string with_bar = "[";
    with_bar.append(filled, '#').append(bar - filled, '.').append("] ").append(line);
    line = std::move(with_bar);
  }
  if (line.size() > limit) line.resize(limit);
  return line;
}

int terminal_width() {
  struct winsize ws {};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

}  // namespace moe
