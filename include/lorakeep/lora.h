// lorakeep/lora.h: LoRA for LibTorch modules, saved and loaded as PEFT
// adapters: the layers (lora_linear.h, lora_embedding.h, lora_conv2d.h),
// PEFT's config (lora_config.h) and the adapter on a model (adapter.h).
// Folding an adapter into weight files is lorakeep/merge_lora.h.
#pragma once

#include "lorakeep/adapter.h"
#include "lorakeep/lora_config.h"
#include "lorakeep/lora_conv2d.h"
#include "lorakeep/lora_embedding.h"
#include "lorakeep/lora_linear.h"
