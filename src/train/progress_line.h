#pragma once
// The trainer's progress line on stderr, one per logged step: redrawn in place on a terminal,
// plain lines elsewhere.
#include <cstdint>
#include <string>

namespace moe {

// "[####....] step 120/400  train loss 4.1234  lr 2.95e-03  5120 tok/s  ETA 1m02s" in at most
// width - 1 columns (a line filling the last column wraps on some terminals): when it is too
// wide the bar shrinks, then tok/s, lr and the ETA go, then the bar. Plain text, no control
// codes.
std::string format_progress_line(int64_t step, int64_t steps, double loss, float lr, double tok_s,
                                 double eta_s, int width);

// The columns of the terminal on stderr; 80 when stderr is not a terminal.
int terminal_width();

}  // namespace moe
