// Schemas of the miue_C ops (the compiled backend of the miue:: ops) and the Python module stub.
// CPU kernels register in csrc/cpu/*.cpp, CUDA kernels in csrc/cuda/*.cu.
#include <Python.h>

#include "common.h"

extern "C" {
// `import miue._C` loads this library, whose static initialisers register the ops below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "miue compiled kernels (torch.ops.miue_C)", -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(miue_C, m) {
  // (z, inv_norm, class_sum, class_count)
  m.def("grouped_normalize(Tensor features, Tensor labels, int num_classes) -> (Tensor, Tensor, Tensor, Tensor)");
  // (loss, z, inv_norm, P, N): row sums over positives and negatives, A = P + N
  m.def("supcon_fwd(Tensor features, Tensor labels, float temperature, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("supcon_bwd(Tensor grad, Tensor z, Tensor inv_norm, Tensor P, Tensor N, Tensor labels, float temperature) -> Tensor");
  // (loss, z, inv_norm, class_sum, class_count)
  m.def("intra_class_fwd(Tensor features, Tensor labels, int num_classes) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("intra_class_bwd(Tensor grad, Tensor z, Tensor inv_norm, Tensor class_sum, Tensor class_count, Tensor labels) -> Tensor");
  m.def("pgd_linf_step_(Tensor(a!) delta, Tensor grad, Tensor clean, Tensor step_size, Tensor eps, float lo, float hi) -> ()");
  m.def("project_linf_(Tensor(a!) delta, Tensor clean, Tensor eps, float lo, float hi) -> ()");
}
