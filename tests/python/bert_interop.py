#!/usr/bin/env python3
"""The BERT example against Hugging Face: transformers and PEFT compute the same
outputs as the LibTorch model, both ways, and merge-lora's output is a model
they read as their own.

  bert_interop.py --bert-lora BIN --cli LORAKEEP --model-dir DIR --config YAML --work DIR

1. bert_lora trains (a few steps) on the job's config and exports its adapter,
   the eval set and the live model's logits on it. transformers'
   BertForSequenceClassification.from_pretrained(DIR, num_labels=K) plus
   peft.PeftModel.from_pretrained(model, adapter) give logits within 1e-4 and
   the same label for every eval text.
2. lorakeep merge-lora --base-prefix bert. folds that adapter into the base
   model.safetensors: the merged file holds bert.* and classifier.* only; its
   plain (LoRA-free) LibTorch forward and transformers' from_pretrained of it
   give the adapted logits within 1e-4.
3. PEFT trains an adapter in Python (a few steps); bert_lora predict loads it
   into the LibTorch model and gives PEFT's logits within 1e-4.
4. A small BERT of other sizes (2 layers, hidden 48, 3 heads), random weights
   written by transformers in the Hugging Face layout: the job runs on it and
   PEFT agrees again.

Exit 0 when all pass, 1 on a mismatch (the first lines say which), 77 when
the model directory is missing outside CI.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

TOL = 1e-4
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def run(cmd):
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        print(r.stdout)
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}")
    return r.stdout


def read_texts(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_texts(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def hf_logits(model, tokenizer_json, texts, max_length):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 50):
            enc = tok.encode_batch(texts[i:i + 50])
            ids = torch.tensor([e.ids for e in enc])
            mask = torch.tensor([e.attention_mask for e in enc])
            types = torch.tensor([e.type_ids for e in enc])
            out.append(model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits)
    return torch.cat(out).numpy()


def compare(name, ours, theirs):
    diff = float(np.max(np.abs(ours - theirs)))
    same_labels = int((ours.argmax(1) == theirs.argmax(1)).sum())
    check(diff <= TOL, f"{name}: max |logit difference| {diff:.2e} <= {TOL:g} over {ours.shape[0]} texts")
    check(same_labels == ours.shape[0], f"{name}: the same label for {same_labels} of {ours.shape[0]} texts")


def job_and_peft(args, model_dir, run_dir, max_steps, label):
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    run([args.bert_lora, "train", "--config", args.config, "--model-dir", model_dir, "--output-dir", run_dir,
         "--max-steps", str(max_steps)])
    summary = json.load(open(os.path.join(run_dir, "run_summary.json")))
    k = len(summary["classes"])
    eval_set = read_texts(os.path.join(run_dir, "eval_set.jsonl"))
    ours = load_file(os.path.join(run_dir, "eval_logits.safetensors"))["logits"]
    adapter = os.path.join(run_dir, "final_adapter")
    torch.manual_seed(0)
    base = BertForSequenceClassification.from_pretrained(model_dir, num_labels=k)
    peft_model = PeftModel.from_pretrained(base, adapter)
    theirs = hf_logits(peft_model, os.path.join(model_dir, "tokenizer.json"), [e["text"] for e in eval_set],
                       args.max_length)
    compare(f"{label}: LibTorch model vs transformers + PEFT on the eval set", ours, theirs)
    labels = np.array([e["label"] for e in eval_set])
    acc = float((theirs.argmax(1) == labels).mean())
    check(abs(acc - summary["finetuned_accuracy"]) < 1e-9,
          f"{label}: PEFT's eval accuracy {acc:.4f} is the job's {summary['finetuned_accuracy']:.4f}")
    return k, eval_set, ours, adapter


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bert-lora", required=True)
    p.add_argument("--cli", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--max-length", type=int, default=64)
    args = p.parse_args()
    if not os.path.exists(os.path.join(args.model_dir, "model.safetensors")):
        msg = f"no model at {args.model_dir} (scripts/fetch-minilm.sh BUILD_DIR fetches it)"
        if os.environ.get("CI"):
            sys.exit("FAIL " + msg)
        print("SKIP " + msg)
        sys.exit(77)
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    w = lambda *parts: os.path.join(args.work, *parts)  # noqa: E731
    tokenizer_json = os.path.join(args.model_dir, "tokenizer.json")

    # 1. LibTorch -> PEFT.
    k, eval_set, ours, adapter = job_and_peft(args, args.model_dir, w("run"), 10, "all-MiniLM-L6-v2")
    texts_file = os.path.join(w("run"), "eval_set.jsonl")

    # 2. merge-lora into the BertModel file, with the prefix mapping.
    run([args.cli, "merge-lora", "--base", os.path.join(args.model_dir, "model.safetensors"), "--adapter", adapter,
         "--out", w("merged"), "--base-prefix", "bert."])
    from safetensors import safe_open

    names = []
    for f in sorted(os.listdir(w("merged"))):
        if f.endswith(".safetensors"):
            with safe_open(w("merged", f), "np") as s:
                names += list(s.keys())
    odd = [n for n in names if not (n.startswith("bert.") or n.startswith("classifier."))]
    check(not odd and "classifier.weight" in names and "bert.encoder.layer.0.attention.self.query.weight" in names
          and not any("lora_" in n for n in names),
          f"merged file: {len(names)} tensors, BertForSequenceClassification's names (bert.*, classifier.*), no lora_*")
    run([args.bert_lora, "predict", "--model-dir", args.model_dir, "--weights", w("merged"), "--num-labels", str(k),
         "--texts", texts_file, "--out", w("merged_logits.safetensors")])
    compare("merged model, plain LibTorch forward vs the adapted one", load_file(w("merged_logits.safetensors"))["logits"],
            ours)
    shutil.copy(os.path.join(args.model_dir, "config.json"), w("merged", "config.json"))
    merged_hf = BertForSequenceClassification.from_pretrained(w("merged"), num_labels=k)
    compare("merged model read by transformers' from_pretrained vs the adapted LibTorch model",
            hf_logits(merged_hf, tokenizer_json, [e["text"] for e in eval_set], args.max_length), ours)

    # 3. PEFT -> LibTorch: an adapter trained in Python for a few steps.
    torch.manual_seed(0)
    base = BertForSequenceClassification.from_pretrained(args.model_dir, num_labels=k)
    peft_model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules=["query", "value"]))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    tok.enable_truncation(args.max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    opt = torch.optim.AdamW([q for q in peft_model.parameters() if q.requires_grad], lr=1e-2)
    peft_model.train()
    train = eval_set[::5]
    for step in range(3):
        batch = train[step * 8:(step + 1) * 8]
        enc = tok.encode_batch([e["text"] for e in batch])
        out = peft_model(input_ids=torch.tensor([e.ids for e in enc]),
                         attention_mask=torch.tensor([e.attention_mask for e in enc]),
                         token_type_ids=torch.tensor([e.type_ids for e in enc]),
                         labels=torch.tensor([e["label"] for e in batch]))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    # save_pretrained writes a model card: from a template (which needs Jinja2,
    # not among the pinned peers) unless the directory has one already.
    os.makedirs(w("peft_adapter"))
    with open(w("peft_adapter", "README.md"), "w") as f:
        f.write("---\nlibrary_name: peft\n---\nA test adapter.\n")
    peft_model.save_pretrained(w("peft_adapter"))
    some = [e["text"] for e in eval_set[::4]]
    write_texts(w("peft_texts.jsonl"), some)
    theirs = hf_logits(peft_model, tokenizer_json, some, args.max_length)
    run([args.bert_lora, "predict", "--model-dir", args.model_dir, "--adapter", w("peft_adapter"), "--num-labels",
         str(k), "--texts", w("peft_texts.jsonl"), "--out", w("peft_logits.safetensors")])
    compare("adapter trained by PEFT, loaded into the LibTorch model vs PEFT",
            load_file(w("peft_logits.safetensors"))["logits"], theirs)
    trained = load_file(w("peft_adapter", "adapter_model.safetensors"))
    lora_b = [n for n in trained if n.endswith("lora_B.weight")]
    check(len(lora_b) == 12 and all(np.abs(trained[n]).max() > 0 for n in lora_b),
          f"PEFT's adapter: {len(lora_b)} trained (non-zero) lora_B factors, so the LoRA path is compared too")

    # 4. A BERT of other sizes, random weights in the Hugging Face layout.
    torch.manual_seed(1)
    small = BertModel(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                 intermediate_size=96, max_position_embeddings=128))
    small.save_pretrained(w("small_bert"))  # safetensors: the default since transformers 4.35, the only format in 5
    shutil.copy(tokenizer_json, w("small_bert", "tokenizer.json"))
    job_and_peft(args, w("small_bert"), w("small_run"), 10, "small random BERT (2 layers, hidden 48)")

    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
