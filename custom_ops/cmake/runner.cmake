# mbq_run_model (tools/run_model.cpp): runs ONNX models with libmbq_ops registered on .npy
# inputs, e.g. the cross-built linux-aarch64 library under qemu-user (configure with
# -DMBQ_BUILD_RUNNER=ON). Unlike the op library, the runner links the ONNX Runtime library:
# MBQ_ORT_LIB (default: the SDK's linux-arm64/lib/libonnxruntime.so when cross compiling for
# aarch64 Linux; give it explicitly for other targets, e.g. the PyPI wheel's libonnxruntime.so.1.x
# on x86-64, or the AAR's jni/arm64-v8a/libonnxruntime.so on Android).
#
# Expects ORT_INCLUDE_DIR (the SDK's include/) to be set by the includer.

option(MBQ_BUILD_RUNNER "Build the mbq_run_model test driver" OFF)

if(MBQ_BUILD_RUNNER)
  if(NOT ORT_INCLUDE_DIR)
    message(FATAL_ERROR "runner.cmake: ORT_INCLUDE_DIR (ORT headers) is not set")
  endif()
  if(NOT MBQ_ORT_LIB)
    get_filename_component(_mbq_sdk "${ORT_INCLUDE_DIR}" DIRECTORY)
    if(CMAKE_SYSTEM_NAME STREQUAL "Linux" AND CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64)$")
      set(MBQ_ORT_LIB "${_mbq_sdk}/linux-arm64/lib/libonnxruntime.so")
    elseif(ANDROID AND ANDROID_ABI STREQUAL "arm64-v8a")
      set(MBQ_ORT_LIB "${_mbq_sdk}/android/jni/arm64-v8a/libonnxruntime.so")
    endif()
  endif()
  if(NOT MBQ_ORT_LIB OR NOT EXISTS "${MBQ_ORT_LIB}")
    message(FATAL_ERROR "runner.cmake: ONNX Runtime library not found (MBQ_ORT_LIB='${MBQ_ORT_LIB}'); "
                        "run tools/fetch_ort_sdk.py or pass -DMBQ_ORT_LIB=/path/to/libonnxruntime.so")
  endif()
  add_executable(mbq_run_model "${CMAKE_CURRENT_LIST_DIR}/../tools/run_model.cpp")
  target_compile_features(mbq_run_model PRIVATE cxx_std_17)
  target_compile_options(mbq_run_model PRIVATE -Wall -Wextra)
  target_include_directories(mbq_run_model SYSTEM PRIVATE "${ORT_INCLUDE_DIR}")
  target_link_libraries(mbq_run_model PRIVATE "${MBQ_ORT_LIB}")
  get_filename_component(_mbq_ort_libdir "${MBQ_ORT_LIB}" DIRECTORY)
  set_target_properties(mbq_run_model PROPERTIES BUILD_RPATH "${_mbq_ort_libdir}")
endif()
