#pragma once
// Rng: a small counter-free generator (xoshiro256**) seeded by splitmix64, so a run seed
// gives every purpose (init, noise, jitter, data) its own reproducible stream.
#include <array>
#include <cstdint>
#include <span>

namespace moe {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0);
  // A new generator for one purpose, derived from this one's seed and a purpose tag.
  static Rng for_purpose(uint64_t run_seed, uint64_t purpose);

  uint64_t next_u64();
  float uniform();                    // [0, 1)
  float uniform(float lo, float hi);  // [lo, hi)
  float normal();                     // N(0, 1), Box-Muller
  void fill_uniform(std::span<float> out, float lo, float hi);
  void fill_normal(std::span<float> out, float mean, float stddev);

  std::array<uint64_t, 4> state() const { return s_; }
  void set_state(const std::array<uint64_t, 4>& s) { s_ = s; }

 private:
  std::array<uint64_t, 4> s_{};
};

}  // namespace moe
