// lorakeep/lorakeep.h: the whole public API in one include.
#pragma once

#include "lorakeep/dtype.h"
#include "lorakeep/error.h"
#include "lorakeep/logging.h"
#include "lorakeep/lora.h"
#include "lorakeep/lora_config.h"
#include "lorakeep/memory.h"
#include "lorakeep/merge.h"
#include "lorakeep/safetensors.h"
#include "lorakeep/sharded.h"
#include "lorakeep/tensor_info.h"
#include "lorakeep/tensor_source.h"
#include "lorakeep/transfer.h"
#include "lorakeep/version.h"
