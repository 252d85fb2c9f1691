"""torchvision's FCOS-R50-FPN, timed the way bench/ times ps_jax.

The detector AlignPS is built on, as a PyTorch user would take it: the
train step (forward with its losses, backward, SGD with momentum) on
random images with 8 random people each, and inference (forward with its
post-processing: score threshold, NMS, top detections) on one image.
Untrained weights, 2 classes (background, person); torchvision's
transform resizes nothing when min_size/max_size equal the input's sides.

Needs torch and torchvision, which ps_jax never depends on: run it with
the Python of a separate environment, e.g.

  python -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1
  /tmp/torchenv/bin/python bench/anchors/torchvision_fcos.py train 512 512 2

Prints one JSON line: the mode, input, batch, device, thread count, and
the median and every timed step in seconds. bench/vs_torchvision.py runs
it interleaved with ps_jax's own steps.
"""
import argparse
import json
import statistics
import time

import torch
import torchvision


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("mode", choices=["train", "infer"])
  parser.add_argument("height", type=int)
  parser.add_argument("width", type=int)
  parser.add_argument("batch", type=int, help="images per step (infer: 1)")
  parser.add_argument("--steps", type=int, default=3, help="timed steps")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps")
  args = parser.parse_args()
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  model = torchvision.models.detection.fcos_resnet50_fpn(
      weights=None, weights_backbone=None, num_classes=2,
      min_size=min(args.height, args.width),
      max_size=max(args.height, args.width)).to(device)
  images = [torch.rand(3, args.height, args.width, device=device)
            for _ in range(args.batch)]

  def people():
    corner = torch.rand(8, 2, device=device) * torch.tensor(
        [args.width * 0.7, args.height * 0.5], device=device)
    size = 30 + torch.rand(8, 2, device=device) * torch.tensor(
        [args.width * 0.2, args.height * 0.4], device=device)
    return {"boxes": torch.cat([corner, corner + size], 1),
            "labels": torch.ones(8, dtype=torch.int64, device=device)}

  targets = [people() for _ in images]
  optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

  def train_step():
    loss = sum(model(images, targets).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

  def infer():
    with torch.no_grad():
      model(images[:1])

  if args.mode == "train":
    model.train()
    step = train_step
  else:
    model.eval()
    step = infer
  times = []
  for i in range(args.warmup + args.steps):
    t0 = time.perf_counter()
    step()
    if device == "cuda":
      torch.cuda.synchronize()
    if i >= args.warmup:
      times.append(time.perf_counter() - t0)
  print(json.dumps({
      "system": "torchvision FCOS-R50-FPN", "mode": args.mode,
      "input_hw": [args.height, args.width],
      "batch": args.batch if args.mode == "train" else 1, "device": device,
      "threads": torch.get_num_threads(), "torch": torch.__version__,
      "torchvision": torchvision.__version__,
      "step_s": statistics.median(times), "step_times_s": times}))


if __name__ == "__main__":
  main()
