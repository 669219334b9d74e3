// Prints the launchers' split plan (spa_device.cuh plan_split) for the inputs
// on stdin, one "M n_tiles n_groups slices split_k has_workspace ctas_per_sm" per line ->
// "slices splits groups_per_split". plugins/bench/model.py mirrors plan_split
// to predict the next GPU run; tests/test_plugins_emulated.py compares the two
// (SPA_EMU_SMS sets the SM count, as for the kernels).
#include <cstdio>

#include "spa_device.cuh"

void spa::set_error(const char*) {}

int main() {
  int m, tiles, groups, slices, split, workspace, ctas;
  while (std::scanf("%d %d %d %d %d %d %d", &m, &tiles, &groups, &slices, &split, &workspace, &ctas) == 7) {
    const spa::SplitPlan plan = spa::plan_split(m, tiles, groups, slices, split, workspace != 0, ctas);
    std::printf("%d %d %d\n", plan.slices, plan.splits, plan.groups_per_split);
  }
  return 0;
}
