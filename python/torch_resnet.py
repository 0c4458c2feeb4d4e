"""The CIFAR ResNet-18 in PyTorch, as in the original project (kuangliu-style).

Used by oodnc's interop test (a PyTorch state dict saved as safetensors must give
the same logits in oodnc) and by `oodnc bench train` (the PyTorch eager baseline).

    python torch_resnet.py export --out DIR [--classes 100] [--width 1.0] [--naming shortcut|downsample]
    python torch_resnet.py bench --batch 128 --steps 5 [--width 1.0] [--device cuda] [--amp bf16] [--channels-last]
"""
import argparse
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, naming):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        proj = None
        if stride != 1 or cin != cout:
            proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.naming = naming
        setattr(self, naming, proj if proj is not None else nn.Sequential())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + getattr(self, self.naming)(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes=100, width=1.0, naming="shortcut"):
        super().__init__()
        w = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        cin = w[0]
        for i, c in enumerate(w):
            s = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, c, s, naming), BasicBlock(c, c, 1, naming)))
            cin = c
        self.fc = nn.Linear(w[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def export(args):
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    model = ResNet18(args.classes, args.width, args.naming)
    # Make BN statistics and affine parameters non-trivial, so that eval mode is tested.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.num_batches_tracked.fill_(123)
        model.fc.weight.normal_(0, 0.1)
        model.fc.bias.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{args.out}/model.safetensors")
    save_file({"input": x, "logits": logits}, f"{args.out}/io.safetensors")
    print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "keys": len(state)}))


def bench(args):
    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = ResNet18(args.classes, args.width).to(dev, memory_format=fmt)
    # The fused kernel, as oodnc's Sgd::step uses (PyTorch's default would be a
    # per-parameter loop on the CPU, foreach kernels on CUDA).
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, fused=True)
    x = torch.randn(args.batch, 3, 32, 32, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, args.classes, (args.batch,), device=dev)
    model.train()
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()

    for _ in range(10 if cuda else 1):  # warm-up (cuDNN autotuning)
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({"images_per_s": args.batch / med, "step_s": med, "threads": torch.get_num_threads()}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--out", required=True)
    e.add_argument("--classes", type=int, default=100)
    e.add_argument("--width", type=float, default=1.0)
    e.add_argument("--naming", choices=["shortcut", "downsample"], default="shortcut")
    e.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("bench")
    b.add_argument("--batch", type=int, default=128)
    b.add_argument("--steps", type=int, default=5)
    b.add_argument("--classes", type=int, default=100)
    b.add_argument("--width", type=float, default=1.0)
    b.add_argument("--threads", type=int, default=0)
    b.add_argument("--device", default="cpu")
    b.add_argument("--amp", choices=["off", "bf16"], default="off")
    b.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    {"export": export, "bench": bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
