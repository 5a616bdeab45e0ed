// Python module flex._C. Importing it loads this library, whose static initialisers register the
// flex:: operators with the PyTorch dispatcher (torch.ops.flex.*); the module itself is empty.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "Compiled kernels of FLEX, exposed as torch.ops.flex.*", -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
