def test_tiny_run_completes(run_tiny):
    record = run_tiny("task=rte")
    assert record["status"] == "completed"
    assert 0 <= record["metrics"]["best"]["metrics"]["dev"]["accuracy"] <= 100


def test_gradient_clipping_works_with_the_fused_optimizer():
    import torch

    from ftlab.backbones import load_model
    from ftlab.methods.finetune import FineTune
    from ftlab.tasks.classification.module import ClassificationModule

    from conftest import compose_config

    cfg = compose_config(["backbone=tiny-bert"])
    model = load_model(cfg.backbone, num_labels=2)
    module = ClassificationModule(model, FineTune(), cfg.task, cfg.optim)
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert abs(float(total) - 1.0) < 1e-3  # was ~10 * sqrt(numel); float32 sums
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1e-3, gradient_clip_algorithm="value")
    assert all(float(p.grad.abs().max()) <= 1e-3 for p in model.parameters())
