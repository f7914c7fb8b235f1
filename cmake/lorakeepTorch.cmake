# lorakeep_find_torch(): find_package(Torch REQUIRED), with every library
# taken from the same LibTorch.
#
# TorchConfig.cmake looks its libraries up with find_library(NAME PATHS
# <its prefix>/lib), and find_library searches the system's directories before
# PATHS. With Debian's libtorch-dev installed next to a LibTorch download or a
# pip-installed torch, c10 and torch then come from Debian and the rest from
# the download: the program loads two libc10 and aborts at start-up
# (DispatchKeySet.cpp INTERNAL ASSERT). When the TorchConfig.cmake that
# find_package will use is not the system's, each library is pinned to its
# prefix's own file first (as -Dc10_LIBRARY=<prefix>/lib/libc10.so would).
#
# A pip-installed torch also brings its CUDA libraries as nvidia-* wheels
# (site-packages/nvidia/*/lib), found at run time through libtorch_cuda's own
# run path; the linker needs them too (-rpath-link), or it resolves NCCL and
# cuBLAS against older system copies and fails.
macro(lorakeep_find_torch)
  find_path(LORAKEEP_TORCH_CONFIG_DIR NAMES TorchConfig.cmake
            HINTS ${Torch_DIR} $ENV{Torch_DIR}
            PATHS ${CMAKE_PREFIX_PATH} $ENV{CMAKE_PREFIX_PATH}
            PATH_SUFFIXES share/cmake/Torch Torch
            NO_DEFAULT_PATH)
  if(LORAKEEP_TORCH_CONFIG_DIR)
    get_filename_component(_lorakeep_torch_prefix "${LORAKEEP_TORCH_CONFIG_DIR}/../../.." ABSOLUTE)
    set(LORAKEEP_TORCH_LIB_DIR "${_lorakeep_torch_prefix}/lib")  # not a system directory
    foreach(_lib c10 c10_cuda torch torch_cpu torch_cuda caffe2_nvrtc shm)
      string(TOUPPER "${_lib}" _upper)
      set(_file "${_lorakeep_torch_prefix}/lib/lib${_lib}.so")
      if(EXISTS "${_file}")
        # TorchConfig.cmake names some lib_LIBRARY, some LIB_LIBRARY.
        set(${_lib}_LIBRARY "${_file}" CACHE FILEPATH "LibTorch's ${_lib}")
        set(${_upper}_LIBRARY "${_file}" CACHE FILEPATH "LibTorch's ${_lib}")
      endif()
    endforeach()
    if(NOT Torch_DIR)
      set(Torch_DIR "${LORAKEEP_TORCH_CONFIG_DIR}" CACHE PATH "LibTorch's TorchConfig.cmake")
    endif()
  endif()

  find_package(Torch REQUIRED)

  if(LORAKEEP_TORCH_CONFIG_DIR)
    file(GLOB _lorakeep_nvidia_libs LIST_DIRECTORIES true "${_lorakeep_torch_prefix}/../nvidia/*/lib"
         "${_lorakeep_torch_prefix}/../nvidia/*/*/lib")
    foreach(_dir ${_lorakeep_nvidia_libs})
      if(IS_DIRECTORY "${_dir}")
        set_property(TARGET torch APPEND PROPERTY INTERFACE_LINK_OPTIONS "LINKER:-rpath-link,${_dir}")
      endif()
    endforeach()
  endif()
endmacro()
