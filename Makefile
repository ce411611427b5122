# `make test` on a fresh machine: creates .venv, installs the pinned dependencies, runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test install demo web-demo bench clean parity train-demo

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# offline demo: tiny random-weight checkpoints under .cache/demo/, full pipeline on examples/demo_layout.json (CPU)
demo: $(STAMP)
	$(PY) -m ldm.inference.demo --no-progress

# web demo, offline on the same tiny random-weight checkpoints (built if missing): http://127.0.0.1:7860
web-demo: $(STAMP)
	$(PY) demo/app.py --demo --port 7860

# tiny training demo (CPU, ~15 s): random-weight SD/CLIP stand-ins and 8 synthetic box images under
# .cache/train_demo/ (DATA/make_tiny_demo.py), 30 iterations of configs/tiny_text_box.yaml with previews, then
# gligen_inference.py on the last checkpoint (outputs: .cache/train_demo/OUTPUT/demo/tag00/, .cache/train_demo/generation/)
train-demo: $(STAMP)
	rm -rf .cache/train_demo/OUTPUT/demo .cache/train_demo/generation
	$(PY) DATA/make_tiny_demo.py --root .cache/train_demo
	$(PY) main.py --yaml_file configs/tiny_text_box.yaml --DATA_ROOT .cache/train_demo \
	  --OUTPUT_ROOT .cache/train_demo/OUTPUT --name demo --official_ckpt_name tiny_sd.ckpt --device cpu \
	  --batch_size 4 --workers 0 --warmup_steps 5 --base_learning_rate 1e-2 --total_iters 30 --save_every_iters 10 \
	  --preview_steps 10
	$(PY) gligen_inference.py --ckpt .cache/train_demo/OUTPUT/demo/tag00/checkpoint_latest.pth \
	  --layout .cache/train_demo/layout.json --clip .cache/train_demo/tiny_clip --device cpu --steps 10 \
	  --batch_size 2 --folder .cache/train_demo/generation --no-progress

# speed / memory of our UNet vs diffusers' gated UNet, CPU fp32 256x256 (~10 min; see bench/RESULTS.md)
bench: $(STAMP)
	$(PY) bench/bench_unet.py --device cpu --dtype fp32 --resolution 256

# the reference checker on the golden fixtures (the project's shared copy if present, else the one in tests/reference)
PARITY_DIR := $(if $(wildcard ../shared/reference/check_parity.py),../shared/reference,tests/reference)
parity: $(STAMP)
	$(PY) $(PARITY_DIR)/check_parity.py --project . --golden $(PARITY_DIR)/golden

clean:
	rm -rf $(VENV) .cache .pytest_cache
