"""Training: the one loop, optimizers, LoRA, losses, the objective registry, distillation, weight loading
(pretrained), run preparation, evaluation steps, and the pretraining and fine-tuning engines."""
