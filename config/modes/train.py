"""``--train``: its flag groups (read by ``--lr_finder`` and ``--sweep`` too) and checks."""
from __future__ import annotations

import argparse
from pathlib import Path

from config.base import FlagGroup, Mode, need, need_file, need_probability
from utils.eval_metric import EVAL_METRICS, SINGLE_LABEL_METRICS
from utils.weights_name import is_weights_name, teacher_is_file


def _add_weights(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--pretrained", type=str, default=None,
                   help="a local weights file (torchvision, timm or our checkpoint; a head of another size is "
                        "skipped), or weights by name with a new head: imagenet (the family's default ImageNet "
                        "weights), a torchvision weights name (IMAGENET1K_V2) or a timm tag (a1_in1k), fetched by "
                        "the library into its cache (TORCH_HOME, the Hugging Face cache for timm); their "
                        "preprocessing becomes the default. A package (--package's folder): hf-hub:REPO (through the "
                        "Hugging Face cache) or local-dir:DIR; its preprocessing and input size become the default")
    g.add_argument("--drop_rate", type=float, default=None,
                   help="dropout before the classifier (timm drop_rate, torchvision dropout, efficientnet-pytorch "
                        "dropout_rate, resnest final_drop); default: the model's own")
    g.add_argument("--drop_path_rate", type=float, default=None,
                   help="stochastic depth (timm drop_path_rate, torchvision stochastic_depth_prob, "
                        "efficientnet-pytorch drop_connect_rate); default: the model's own")
    g.add_argument("--head_lr_mult", type=float, default=1.0, metavar="M",
                   help="the classifier head's LR is M x the LR (e.g. 10 with pretrained weights)")
    g.add_argument("--layer_decay", type=float, default=None, metavar="D",
                   help="layer-wise LR decay as timm's: a layer k below the head trains at D**k x the LR")


def _check_weights(cfg: argparse.Namespace) -> None:
    for flag in ("drop_rate", "drop_path_rate"):
        value = getattr(cfg, flag)
        need(value is None or 0 <= value < 1, f"--{flag} must be in [0, 1), got {value}")
    need(cfg.head_lr_mult > 0, f"--head_lr_mult must be > 0, got {cfg.head_lr_mult}")
    need(cfg.layer_decay is None or 0 < cfg.layer_decay <= 1, f"--layer_decay must be in (0, 1], got {cfg.layer_decay}")


def _weights_file(cfg: argparse.Namespace, given: set[str]) -> None:
    if cfg.pretrained is not None and not is_weights_name(cfg.pretrained):
        need_file(cfg.pretrained, "pretrained", hint=" (or give a weights name such as imagenet)")


WEIGHTS = FlagGroup("weights and head", _add_weights, _check_weights, _weights_file)


def _add_fine_tuning(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--freeze_backbone", action="store_true",
                   help="train only the classifier head; the backbone's weights and batch-norm statistics stay "
                        "fixed (its batch norms in eval mode) until --unfreeze_epoch")
    g.add_argument("--unfreeze_epoch", type=int, default=None, metavar="N",
                   help="with --freeze_backbone: train every layer from epoch N on (0-based: 1 = after one "
                        "frozen epoch); default: frozen for the whole run")
    g.add_argument("--precise_bn", type=int, default=0, metavar="N",
                   help="recompute batch-norm running statistics over N training batches before each "
                        "evaluation and the checkpoint save (0 = off)")
    g.add_argument("--swa_epochs", type=int, default=0, metavar="N",
                   help="stochastic weight averaging: average the weights of the last N epochs "
                        "(torch.optim.swa_utils), recompute their batch-norm statistics at the end, save them as "
                        "checkpoints/swa.pth and test them next to best.pth (0 = off)")


def _check_fine_tuning(cfg: argparse.Namespace) -> None:
    need(cfg.precise_bn >= 0, f"--precise_bn must be >= 0 batches, got {cfg.precise_bn}")
    need(0 <= cfg.swa_epochs <= cfg.epochs, f"--swa_epochs must be between 0 and --epochs ({cfg.epochs}), "
                                            f"got {cfg.swa_epochs}")
    if cfg.unfreeze_epoch is not None:
        need(cfg.freeze_backbone, "--unfreeze_epoch needs --freeze_backbone (it says when the frozen backbone "
                                  "starts training)")
        need(cfg.unfreeze_epoch >= 1, f"--unfreeze_epoch must be >= 1 (epochs are counted from 0), "
                                      f"got {cfg.unfreeze_epoch}")


FINE_TUNING = FlagGroup("fine-tuning", _add_fine_tuning, _check_fine_tuning)


def _add_optimizer(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw", "radam", "nadam", "lamb", "ranger"], default="sgd",
                   help="optimizer (ranger = RAdam inside Lookahead)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    g.add_argument("--weight_decay", type=float, default=1e-4,
                   help="weight decay (never applied to biases and normalisation weights)")
    g.add_argument("--lookahead", action="store_true", help="wrap the optimizer in Lookahead")
    g.add_argument("--lookahead_alpha", type=float, default=0.5, help="Lookahead slow-weight step")
    g.add_argument("--lookahead_k", type=int, default=6, help="Lookahead synchronisation period")
    g.add_argument("--accumulation_steps", type=int, default=1,
                   help="micro-batches whose gradients are summed before one optimizer step")


def _check_optimizer(cfg: argparse.Namespace) -> None:
    need(cfg.momentum >= 0, f"--momentum must be >= 0, got {cfg.momentum}")
    need(cfg.weight_decay >= 0, f"--weight_decay must be >= 0, got {cfg.weight_decay}")
    need(cfg.accumulation_steps >= 1, f"--accumulation_steps must be >= 1, got {cfg.accumulation_steps}")
    need(0 <= cfg.lookahead_alpha <= 1 and cfg.lookahead_k >= 1,
         f"--lookahead_alpha must be in [0, 1] and --lookahead_k >= 1, got {cfg.lookahead_alpha}, {cfg.lookahead_k}")


OPTIMIZER = FlagGroup("optimizer", _add_optimizer, _check_optimizer)


def _add_schedule(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    g.add_argument("--scheduler", choices=["step", "multistep", "cosine", "poly", "onecycle"], default="cosine",
                   help="learning-rate schedule after warm-up")
    g.add_argument("--lr_steps", type=float, nargs="+", default=None, metavar="EPOCH",
                   help="milestones in epochs for multistep (also override the default step schedule)")
    g.add_argument("--lr_ratios", type=float, nargs="+", default=None, metavar="FACTOR",
                   help="LR factor (of the peak) from each milestone on; default 0.1, 0.01, ...")
    g.add_argument("--poly_power", type=float, default=0.9, help="power of the poly schedule")
    g.add_argument("--onecycle_pct", type=float, default=0.3, help="fraction of steps rising in the one-cycle schedule")
    g.add_argument("--warmup", type=float, default=1.0, help="linear warm-up length in epochs")
    g.add_argument("--ema", action="store_true",
                   help="keep an exponential moving average of the weights, evaluated and saved beside them")
    g.add_argument("--ema_decay", type=float, default=0.9998, help="EMA decay per optimizer step")
    g.add_argument("--clip_grad", type=float, default=None, metavar="NORM",
                   help="clip the gradient norm to this value before each optimizer step")


def _check_schedule(cfg: argparse.Namespace) -> None:
    need(cfg.lr >= 0, f"--lr must be >= 0 (0: the weights stay as they start, a check of the pipeline), got {cfg.lr}")
    need(cfg.warmup >= 0, f"--warmup must be >= 0 epochs, got {cfg.warmup}")
    need(cfg.warmup < cfg.epochs or cfg.warmup == 0,
         f"--warmup ({cfg.warmup} epochs) must be shorter than --epochs ({cfg.epochs})")
    need(cfg.clip_grad is None or cfg.clip_grad > 0, f"--clip_grad must be > 0, got {cfg.clip_grad}")
    need(cfg.poly_power >= 0, f"--poly_power must be >= 0, got {cfg.poly_power}")
    need(0 <= cfg.ema_decay < 1, f"--ema_decay must be in [0, 1), got {cfg.ema_decay}")
    need(0 < cfg.onecycle_pct < 1, f"--onecycle_pct must be in (0, 1), got {cfg.onecycle_pct}")
    if cfg.scheduler == "multistep":
        need(bool(cfg.lr_steps), "--scheduler multistep needs --lr_steps EPOCH [EPOCH ...]")
    if cfg.lr_steps:
        need(all(b > a for a, b in zip([0.0] + cfg.lr_steps, cfg.lr_steps)),
             f"--lr_steps must be increasing positive epochs, got {cfg.lr_steps}")
        need(cfg.scheduler in ("step", "multistep"), f"--lr_steps needs --scheduler step or multistep, "
                                                     f"got {cfg.scheduler}")
    if cfg.lr_ratios:
        need(bool(cfg.lr_steps) and len(cfg.lr_ratios) == len(cfg.lr_steps),
             f"--lr_ratios needs one value per --lr_steps milestone, got {cfg.lr_ratios} for {cfg.lr_steps}")


SCHEDULE = FlagGroup("learning-rate schedule", _add_schedule, _check_schedule)


def _add_length(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--epochs", type=int, default=30, help="number of training epochs")
    g.add_argument("--save_every_steps", type=int, default=0, metavar="N",
                   help="also save last.pth (resumable where it stands) every N optimizer steps inside an epoch, "
                        "so that a kill loses at most N steps; 0 = off: once per epoch")
    g.add_argument("--log_interval", type=int, default=0, metavar="N",
                   help="every N optimizer steps of an epoch, a line with the loss of those steps, the LR, images/s, "
                        "the share of the time spent waiting for data and the epoch's ETA, to the console, log.txt "
                        "and TensorBoard (tensorboard/steps, at the global step); 0 = off: one line per epoch")
    g.add_argument("--tracker", choices=["none", "mlflow", "wandb"], default="none",
                   help="also log params, per-epoch metrics, final metrics and pictures to MLflow "
                        "(MLFLOW_TRACKING_URI, else <output>/mlruns) or to Weights & Biases (WANDB_PROJECT, else "
                        "the output folder's name; files in WANDB_DIR, else <output>/wandb; WANDB_MODE=offline "
                        "keeps the run on disk)")


def _check_length(cfg: argparse.Namespace) -> None:
    need(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
    need(cfg.save_every_steps >= 0, f"--save_every_steps must be >= 0 (0 = off), got {cfg.save_every_steps}")
    need(cfg.log_interval >= 0, f"--log_interval must be >= 0 (0 = off), got {cfg.log_interval}")


# A resumed run may train longer and log elsewhere: these do not change what the epochs done so far were.
LENGTH = FlagGroup("run length and tracking", _add_length, _check_length, resume_safe=True)


def _add_selection(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--eval_metric", choices=list(EVAL_METRICS), default=None,
                   help="the validation metric that chooses best.pth and drives --patience, --checkpoint_hist, "
                        "--compare and sweeps (val_loss: lower is better; a tie goes to the lower val loss, then the "
                        "earlier epoch); default: map with --multi_label, else top1")


def _check_selection(cfg: argparse.Namespace) -> None:
    metric = cfg.eval_metric
    need(metric != "map" or cfg.multi_label, "--eval_metric map is the mean average precision of a --multi_label "
                                             "model; add --multi_label, or pick top1, top5, macro_f1, balanced_acc "
                                             "or val_loss")
    need(metric not in SINGLE_LABEL_METRICS or not cfg.multi_label,
         f"--eval_metric {metric} counts one predicted class per image; a --multi_label model predicts sets: use "
         f"map (the default), top1 (p@1), top5 or val_loss")


# What best.pth is: a resumed run keeps the metric it chose its best epochs by.
SELECTION = FlagGroup("model selection", _add_selection, _check_selection)


def _add_stopping(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--patience", type=int, default=0, metavar="N",
                   help="early stopping: stop when the eval metric has not improved for N epochs (then test "
                        "best.pth as usual); 0 = off")
    g.add_argument("--min_delta", type=float, default=0.0, metavar="D",
                   help="with --patience: an improvement counts when it beats the best by more than D (the "
                        "metric's units: percentage points, or the loss's)")
    g.add_argument("--checkpoint_hist", type=int, default=0, metavar="N",
                   help="keep the N best epochs by the eval metric as checkpoints/epoch_<E>.pth (listed in "
                        "checkpoints/kept.json); 0 = off")
    g.add_argument("--keep_last", type=int, default=0, metavar="K",
                   help="keep the last K epochs as checkpoints/epoch_<E>.pth (listed in checkpoints/kept.json), "
                        "e.g. for weight averaging; 0 = off")


def _check_stopping(cfg: argparse.Namespace) -> None:
    for flag in ("patience", "checkpoint_hist", "keep_last"):
        need(getattr(cfg, flag) >= 0, f"--{flag} must be >= 0 (0 = off), got {getattr(cfg, flag)}")
    need(cfg.min_delta >= 0, f"--min_delta must be >= 0, got {cfg.min_delta}")
    need(cfg.patience or not cfg.min_delta, "--min_delta is the improvement --patience counts; add --patience N")


# A resumed run may stop sooner or later and keep other epochs: the epochs done so far stay what they were.
STOPPING = FlagGroup("early stopping and kept checkpoints", _add_stopping, _check_stopping, resume_safe=True)


def _add_augmentation(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--train_resize", choices=["letterbox", "rrc"], default="letterbox",
                   help="training geometry: letterbox (keep aspect, pad) or rrc (RandomResizedCrop)")
    g.add_argument("--rrc_scale", type=float, nargs=2, default=[0.08, 1.0], metavar=("MIN", "MAX"),
                   help="area range of RandomResizedCrop (with --train_resize rrc)")
    g.add_argument("--hflip", type=float, default=0.0, help="horizontal flip probability for training images")
    g.add_argument("--aug", action="store_true", help="turn on the per-image augmentation policy --aug_policy")
    g.add_argument("--aug_policy", choices=["autoaugment", "randaugment", "trivialaugment", "custom"],
                   default="randaugment", help="per-image augmentation policy (with --aug)")
    g.add_argument("--autoaugment_policy", choices=["imagenet", "cifar10", "svhn"], default="imagenet",
                   help="AutoAugment's learned policy")
    g.add_argument("--randaugment_n", type=int, default=2, help="RandAugment: operations per image")
    g.add_argument("--randaugment_m", type=int, default=9, help="RandAugment: magnitude (0-30)")
    g.add_argument("--custom_hflip", type=float, default=0.5, help="custom policy: horizontal flip probability")
    g.add_argument("--custom_vflip", type=float, default=0.0, help="custom policy: vertical flip probability")
    g.add_argument("--custom_rotate", type=float, default=10.0, help="custom policy: max rotation in degrees")
    g.add_argument("--custom_crop", type=float, default=0.8,
                   help="custom policy: min area of a random crop resized back (1 = off)")
    g.add_argument("--custom_blur", type=float, default=0.1, help="custom policy: Gaussian blur probability")
    g.add_argument("--custom_noise", type=float, default=0.0, help="custom policy: Gaussian noise std (0-255 units)")
    g.add_argument("--custom_jitter", type=float, default=0.2,
                   help="custom policy: colour jitter strength (brightness/contrast/saturation; hue = s/4)")
    g.add_argument("--random_erasing", type=float, default=0.0, help="random erasing probability per image")
    g.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup Beta(alpha, alpha); 0 = off")
    g.add_argument("--mixup_prob", type=float, default=1.0, help="probability that a batch is mixed")
    g.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="cutmix Beta(alpha, alpha); 0 = off")
    g.add_argument("--mix_switch_prob", type=float, default=0.5,
                   help="with both mixup and cutmix on: probability of cutmix for a mixed batch")
    g.add_argument("--multi_scale", action="store_true",
                   help="per batch, a random input size within +-15%% of --image_size (aspect kept)")
    g.add_argument("--class_balanced", action="store_true",
                   help="sample training images with weights inverse to their class frequency")
    g.add_argument("--repeated_aug", type=int, default=0, metavar="N",
                   help="repeated augmentation (DeiT's sampler): each drawn image N times in a row, each copy "
                        "augmented apart and, under DDP, on another rank; an epoch keeps the dataset's length, so "
                        "it covers about 1/N of the images (0 = off)")
    g.add_argument("--mixup_off_epoch", type=int, default=None, metavar="E",
                   help="mixup and cutmix stop from epoch E on (0-based: 1 = after one mixed epoch), as in "
                        "timm; default: on for the whole run")


def _check_augmentation(cfg: argparse.Namespace) -> None:
    need_probability(cfg, "hflip")
    need(0 < cfg.rrc_scale[0] <= cfg.rrc_scale[1] <= 1,
         f"--rrc_scale must satisfy 0 < MIN <= MAX <= 1, got {cfg.rrc_scale}")
    need_probability(cfg, "mixup_prob", "mix_switch_prob", "random_erasing", "custom_hflip", "custom_vflip",
                     "custom_blur")
    for flag in ("mixup", "cutmix", "custom_rotate", "custom_noise", "custom_jitter"):
        need(getattr(cfg, flag) >= 0, f"--{flag} must be >= 0, got {getattr(cfg, flag)}")
    need(0 < cfg.custom_crop <= 1, f"--custom_crop must be in (0, 1], got {cfg.custom_crop}")
    need(cfg.randaugment_n >= 0 and 0 <= cfg.randaugment_m <= 30,
         f"--randaugment_n must be >= 0 and --randaugment_m in 0..30, got {cfg.randaugment_n}, {cfg.randaugment_m}")
    need(cfg.repeated_aug == 0 or cfg.repeated_aug >= 2,
         f"--repeated_aug must be 0 (off) or >= 2 copies per image, got {cfg.repeated_aug}")
    need(not (cfg.repeated_aug and cfg.class_balanced),
         "--repeated_aug with --class_balanced: both choose the training order; pick one")
    if cfg.mixup_off_epoch is not None:
        need(cfg.mixup > 0 or cfg.cutmix > 0, "--mixup_off_epoch says when --mixup/--cutmix stop; add --mixup "
                                              "ALPHA or --cutmix ALPHA, or drop it")
        need(cfg.mixup_off_epoch >= 1, f"--mixup_off_epoch must be >= 1 (epochs are counted from 0; 0 would never "
                                       f"mix: drop --mixup/--cutmix instead), got {cfg.mixup_off_epoch}")
    need(not (cfg.aug and cfg.bit_depth == 16),
         "--aug: the per-image policies work on 8-bit values; with --bit_depth 16 drop --aug (--train_resize rrc, "
         "--hflip, --random_erasing, --mixup and --cutmix work at 16 bits)")


AUGMENTATION = FlagGroup("augmentation", _add_augmentation, _check_augmentation)


def _add_loss(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--label_smoothing", type=float, default=0.0, help="label smoothing for softmax cross-entropy")
    g.add_argument("--weighted_loss", action="store_true", help="weight the loss by --class_weights or --cost_matrix")
    g.add_argument("--class_weights", type=str, nargs="+", default=["auto"],
                   help="per-class weights: a list of numbers, a file of numbers, or auto (inverse frequency)")
    g.add_argument("--cost_matrix", type=str, default=None,
                   help="file of C rows of C costs (cost of predicting column for true row), with --weighted_loss")
    g.add_argument("--ghm_loss", action="store_true", help="gradient harmonizing mechanism (Li et al., AAAI 2019)")
    g.add_argument("--ghm_bins", type=int, default=30, help="GHM: gradient-norm bins")
    g.add_argument("--ghm_momentum", type=float, default=0.75, help="GHM: moving-average momentum of bin counts")
    g.add_argument("--ohm_loss", action="store_true", help="online hard-example mining")
    g.add_argument("--ohm_ratio", type=float, default=0.7, help="OHM: fraction of terms kept (the hardest)")
    g.add_argument("--threshold_loss", action="store_true", help="ignore terms already beyond a confidence threshold")
    g.add_argument("--threshold_low", type=float, default=0.1,
                   help="threshold loss: other-class p below this is ignored")
    g.add_argument("--threshold_high", type=float, default=0.9,
                   help="threshold loss: true-class p above this is ignored")
    g.add_argument("--focal_loss", action="store_true", help="focal modulation (1 - p_t) ** gamma")
    g.add_argument("--focal_gamma", type=float, default=2.0, help="focal loss gamma")
    g.add_argument("--asl_gamma_neg", type=float, default=ASL_DEFAULTS["asl_gamma_neg"],
                   help="asymmetric loss: focusing of the negatives")
    g.add_argument("--asl_gamma_pos", type=float, default=ASL_DEFAULTS["asl_gamma_pos"],
                   help="asymmetric loss: focusing of the positives")
    g.add_argument("--asl_clip", type=float, default=ASL_DEFAULTS["asl_clip"],
                   help="asymmetric loss: probability margin shifted off the negatives (0 = off)")
    g.add_argument("--bce_target_thresh", type=float, default=None, metavar="T",
                   help="--criterion bce: after smoothing and mixing, targets above T become 1 and the others 0 "
                        "(timm's BinaryCrossEntropy target_threshold, the ResNet strikes back recipe's 0.2); "
                        "default: soft targets as they are")
    g.add_argument("--tune_thresholds", action="store_true",
                   help="--multi_label: per class, the decision threshold with the best F1 on the val split (else "
                        "0.5), kept in each checkpoint and export and used by evaluation, predict and the demo")


ASL_DEFAULTS = {"asl_gamma_neg": 4.0, "asl_gamma_pos": 1.0, "asl_clip": 0.05}  # the flags' defaults (Ridnik et al.)


def _check_loss(cfg: argparse.Namespace) -> None:
    need(0 <= cfg.label_smoothing < 1, f"--label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    need(cfg.focal_gamma >= 0, f"--focal_gamma must be >= 0, got {cfg.focal_gamma}")
    need(cfg.ghm_bins >= 1, f"--ghm_bins must be >= 1, got {cfg.ghm_bins}")
    need(0 <= cfg.ghm_momentum < 1, f"--ghm_momentum must be in [0, 1), got {cfg.ghm_momentum}")
    need(0 < cfg.ohm_ratio <= 1, f"--ohm_ratio must be in (0, 1], got {cfg.ohm_ratio}")
    need(not (cfg.criterion == "asl" and cfg.focal_loss), "--focal_loss with --criterion asl: the asymmetric loss "
                                                            "focuses already (--asl_gamma_neg, --asl_gamma_pos)")
    changed = [f"--{key}" for key, default in ASL_DEFAULTS.items() if getattr(cfg, key) != default]
    need(cfg.criterion == "asl" or not changed, f"{', '.join(changed)}: a setting of the asymmetric loss, but "
                                                f"--criterion is {cfg.criterion}: add --criterion asl, or drop it")
    need(cfg.asl_gamma_neg >= 0 and cfg.asl_gamma_pos >= 0 and 0 <= cfg.asl_clip < 1,
         f"--asl_gamma_neg/--asl_gamma_pos must be >= 0 and --asl_clip in [0, 1), got {cfg.asl_gamma_neg}, "
         f"{cfg.asl_gamma_pos}, {cfg.asl_clip}")
    if cfg.bce_target_thresh is not None:
        need(cfg.criterion == "bce", f"--bce_target_thresh binarises the targets of the sigmoid BCE loss, but "
                                     f"--criterion is {cfg.criterion}: add --criterion bce, or drop it")
        need(0 <= cfg.bce_target_thresh < 1, f"--bce_target_thresh must be in [0, 1), got {cfg.bce_target_thresh}")
    need(0 <= cfg.threshold_low < cfg.threshold_high <= 1,
         f"--threshold_low and --threshold_high need 0 <= low < high <= 1, got {cfg.threshold_low}, "
         f"{cfg.threshold_high}")


def _loss_files(cfg: argparse.Namespace, given: set[str]) -> None:
    need_file(cfg.cost_matrix, "cost_matrix")
    if len(cfg.class_weights) == 1 and cfg.class_weights[0] != "auto":
        value = cfg.class_weights[0]
        try:
            float(value)
        except ValueError:
            need(Path(value).is_file(), f"--class_weights: {value!r} is neither auto, numbers, nor an existing file")


LOSS = FlagGroup("loss", _add_loss, _check_loss, _loss_files)


def _add_teachers(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--distill", action="store_true",
                   help="train on alpha * teacher + (1 - alpha) * label targets from DATA/distill*.txt")
    g.add_argument("--distill_files", type=str, nargs="+", default=None,
                   help="teacher files to average (default: every DATA/distill*.txt)")
    g.add_argument("--teacher", type=str, default=None, metavar="CKPT|NAME",
                   help="online distillation: a frozen teacher runs on every training batch (the same augmented, "
                        "mixed images) beside the student: a checkpoint of this project, or a named pretrained "
                        "model ARCH[:WEIGHTS] (resnet50, resnet50:IMAGENET1K_V2; weights through the libraries' "
                        "caches, as --pretrained NAME); its classes must be the data's")
    g.add_argument("--distill_type", choices=["logit", "feature"], default="logit",
                   help="with --teacher: logit: T^2 * KL(student/T || teacher/T); feature: MSE between the last "
                        "feature maps through a learned 1x1 projection (dropped after training)")
    g.add_argument("--distill_alpha", type=float, default=0.5,
                   help="weight of the teacher: --distill targets alpha * teacher + (1 - alpha) * label; --teacher "
                        "loss (1 - alpha) * task loss + alpha * distillation loss")
    g.add_argument("--distill_temperature", type=float, default=1.0,
                   help="T, softening the teacher: --distill: its probabilities p ** (1/T), renormalised; "
                        "--teacher: both logits divided by T (the KL times T^2)")
    g.add_argument("--distill_missing", choices=["error", "label"], default="error",
                   help="an image missing from the teacher files: an error, or train it on its label")
    g.add_argument("--curriculum_learning", action="store_true",
                   help="multiply each training sample's loss by its weight from the curriculum file")
    g.add_argument("--curriculum_missing_weight", type=float, default=None,
                   help="weight for training images missing from the curriculum file (default: an error)")


def _check_teachers(cfg: argparse.Namespace) -> None:
    need_probability(cfg, "distill_alpha")
    need(cfg.distill_temperature > 0, f"--distill_temperature must be > 0, got {cfg.distill_temperature}")
    need(not (cfg.distill and cfg.teacher), "--distill and --teacher together: --distill trains on a teacher's "
                                             "probabilities saved in files, --teacher runs the teacher online; "
                                             "pick one")
    need(cfg.distill_type == "logit" or cfg.teacher is not None,
         f"--distill_type {cfg.distill_type} applies to an online teacher; add --teacher CKPT|NAME")


def _teacher_files(cfg: argparse.Namespace, given: set[str]) -> None:
    """With --distill: the teacher files named, or found as DATA/distill*.txt, exist; --teacher's file exists."""
    if cfg.teacher is not None and teacher_is_file(cfg.teacher):
        need_file(cfg.teacher, "teacher", "checkpoint", hint=" (or name a model: ARCH[:WEIGHTS], e.g. resnet50)")
    if not cfg.distill:
        return
    from dataloader.shards import side_folder  # only here: the config is read without torch
    files = cfg.distill_files or sorted(str(f) for f in side_folder(cfg.data, cfg.dataset).glob("distill*.txt"))
    need(bool(files), f"--distill needs teacher files: none given with --distill_files and no distill*.txt in "
                      f"{cfg.data}; run --knowledge train --resume TEACHER.pth first")
    for f in files:
        need_file(f, "distill_files")


TEACHERS = FlagGroup("distillation and curriculum learning", _add_teachers, _check_teachers, _teacher_files)


def _add_distributed(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--sync_bn", action="store_true",
                   help="convert batch norms to SyncBatchNorm under DDP (CUDA only: refused on the CPU)")
    g.add_argument("--lr_scale", choices=["none", "linear"], default="none",
                   help="linear: scale --lr by global batch / --lr_base_batch (the global batch is -b x processes "
                        "x --accumulation_steps); none: --lr is the LR of the global batch as given")
    g.add_argument("--lr_base_batch", type=int, default=256, help="reference batch of --lr_scale linear")


def _check_distributed(cfg: argparse.Namespace) -> None:
    need(cfg.lr_base_batch >= 1, f"--lr_base_batch must be >= 1, got {cfg.lr_base_batch}")


DISTRIBUTED = FlagGroup("distributed", _add_distributed, _check_distributed)


def _add_speed(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--channels_last", action="store_true", help="channels-last memory format for the model and inputs")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--use_checkpoint", action="store_true",
                   help="gradient checkpointing: recompute activations in the backward pass to save memory")


# Same numbers, another speed or memory footprint: a resumed run may switch them.
SPEED = FlagGroup("speed and memory", _add_speed, resume_safe=True)

# Every group --train reads, in --help order; --sweep passes them all on to its runs.
GROUPS = (LENGTH, SELECTION, STOPPING, WEIGHTS, FINE_TUNING, OPTIMIZER, SCHEDULE, AUGMENTATION, LOSS, TEACHERS,
          DISTRIBUTED, SPEED)


def _check_train(cfg: argparse.Namespace) -> None:
    need(not (cfg.resume and cfg.pretrained),
         "--resume and --pretrained together: --resume continues a run (weights, optimizer, epoch), "
         "--pretrained starts a new one from weights only; pick one")
    _check_multi_label(cfg)


# Training options that assume one class per image: with --multi_label each is refused with its reason.
SINGLE_LABEL_ONLY = (
    ("class_balanced", "class-balanced sampling weighs each image by its one class's frequency; a multi-label "
                       "image has a set (use --weighted_loss: per-label positive weights)"),
    ("label_smoothing", "label smoothing spreads one class's mass over the others; multi-label targets are "
                        "independent per label"),
    ("cost_matrix", "a cost matrix M[true, predicted] needs one true class per image"),
    ("distill", "the teacher files hold one distribution over the classes per image (softmax); multi-label "
                "targets are per-label probabilities"),
)


def _check_multi_label(cfg: argparse.Namespace) -> None:
    """--multi_label refuses the training options that cannot apply, each with its reason."""
    need(cfg.multi_label or not cfg.tune_thresholds,
         "--tune_thresholds picks per-class decision thresholds of a --multi_label model; add --multi_label")
    if not cfg.multi_label:
        return
    for flag, reason in SINGLE_LABEL_ONLY:
        value = getattr(cfg, flag)
        need(not value or (flag == "cost_matrix" and not cfg.weighted_loss),
             f"--{flag} with --multi_label: {reason}; drop --{flag}")


MODES = (
    Mode("train", "applications.train",
         lambda g: g.add_argument("--train", action="store_true",
                                  help="train a model, then evaluate best.pth on the test split"),
         groups=GROUPS, flags=("curriculum_file", "target_layer", "tta", "use_test_size"), check=_check_train),
)
