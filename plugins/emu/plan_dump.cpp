// Prints the launchers' split plan (spa_launch.cuh plan_split) for the inputs
// on stdin, one "M n_tiles n_groups slices split_k has_workspace ctas_per_sm" per line ->
// "slices splits groups_per_split". plugins/bench/model.py mirrors plan_split
// to predict the next GPU run; tests/test_plugins_emulated.py compares the two
// (SPA_EMU_SMS sets the SM count, as for the kernels). With --gqsa-pass-rows:
// one K per line -> w4_gqsa's rows per pass (gqsa_pass_rows).
#include <cstdio>
#include <string>

#include "spa_launch.cuh"

void spa::set_error(const char*) {}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--gqsa-pass-rows") {  // one K per line -> w4_gqsa's rows per pass
    int k;
    while (std::scanf("%d", &k) == 1) std::printf("%d\n", spa::gqsa_pass_rows(k));
    return 0;
  }
  int m, tiles, groups, slices, split, workspace, ctas;
  while (std::scanf("%d %d %d %d %d %d %d", &m, &tiles, &groups, &slices, &split, &workspace, &ctas) == 7) {
    const spa::SplitPlan plan = spa::plan_split(m, tiles, groups, slices, split, workspace != 0, ctas);
    std::printf("%d %d %d\n", plan.slices, plan.splits, plan.groups_per_split);
  }
  return 0;
}
