"""Class-conditioned diffusion: prepare-batch label dropout, the inferer's training pass and guided sampling."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.networks.nets import DiffusionModelUNet

from medicraft_monai.engines import ClassConditionedPrepareBatch
from medicraft_monai.inferers import ClassConditionedDiffusionInferer, seeded_noise
from medicraft_monai.networks import randomise_zero_weights
from medicraft_monai.schedulers import make_scheduler
from tests._numerics import sampling_atol

NUM_CLASSES = 3


def tiny_unet(random_output: bool = False) -> DiffusionModelUNet:
    """A small class-conditioned UNet; ``random_output`` re-draws the zero-initialised weights so an untrained
    network's prediction depends on its inputs (and class)."""
    torch.manual_seed(0)
    net = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(8, 16),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=8,
        num_class_embeds=NUM_CLASSES + 1,
    )
    if random_output:  # MONAI zero-initialises the output and the residual blocks' last convolutions
        randomise_zero_weights(net, std=0.1)
    return net


def test_prepare_batch_drops_labels_to_the_null_class_at_the_given_rate() -> None:
    prep = ClassConditionedPrepareBatch(num_train_timesteps=1000, null_class=NUM_CLASSES, drop_prob=0.25, seed=1)
    batch = {"image": torch.zeros(4000, 1, 4, 8), "label": torch.randint(0, NUM_CLASSES, (4000,))}
    images, target, args, kwargs = prep(batch)
    labels = kwargs["class_labels"]
    dropped = labels == NUM_CLASSES
    assert 0.22 < dropped.float().mean() < 0.28
    # kept labels are the batch's own
    assert torch.equal(labels[~dropped], batch["label"][~dropped])
    assert torch.equal(target, kwargs["noise"]) and target.shape == images.shape
    assert kwargs["timesteps"].shape == (4000,) and int(kwargs["timesteps"].max()) < 1000


class OracleNetwork(torch.nn.Module):
    """The exact prediction of a diffusion model whose training set is the single image ``target``."""

    def __init__(self, target: torch.Tensor, scheduler, prediction_type: str) -> None:
        super().__init__()
        self.target, self.scheduler, self.prediction_type = target, scheduler, prediction_type

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        ab = self.scheduler.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * self.target) / (1 - ab).sqrt()
        if self.prediction_type == "v_prediction":
            return ab.sqrt() * eps - (1 - ab).sqrt() * self.target
        if self.prediction_type == "sample":
            return self.target.expand_as(x)
        return eps


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_training_target_and_sampler_agree_for_each_prediction_type(prediction_type: str) -> None:
    train_sched = make_scheduler("ddpm", 1000, prediction_type=prediction_type)
    prep = ClassConditionedPrepareBatch(
        1000, null_class=NUM_CLASSES, drop_prob=0.0, prediction_type=prediction_type, scheduler=train_sched
    )
    image = torch.linspace(-1, 1, 8 * 16).reshape(1, 1, 8, 16)
    images, target, _, kwargs = prep({"image": image.repeat(4, 1, 1, 1), "label": torch.zeros(4, dtype=torch.long)})
    ab = train_sched.alphas_cumprod[kwargs["timesteps"]].reshape(-1, 1, 1, 1)
    expected = {
        "epsilon": kwargs["noise"],
        "v_prediction": ab.sqrt() * kwargs["noise"] - (1 - ab).sqrt() * images,
        "sample": images,
    }[prediction_type]
    assert torch.allclose(target, expected, atol=1e-6)
    # a network that predicts that target exactly is sampled back to the training image in a few DDIM steps
    oracle = OracleNetwork(image, train_sched, prediction_type)
    inferer = ClassConditionedDiffusionInferer(train_sched, null_class=NUM_CLASSES)
    noise, _ = seeded_noise([0], (1, 8, 16))
    for sampler, steps in (("ddim", 10), ("dpmpp_2m", 10)):
        sched = make_scheduler(sampler, 1000, prediction_type=prediction_type)
        out = inferer.sample(noise, oracle, [0], scheduler=sched, num_inference_steps=steps, verbose=False)
        assert torch.allclose(out, image, atol=1e-3), (sampler, float((out - image).abs().max()))


def test_prepare_batch_rejects_an_unknown_prediction_type() -> None:
    with pytest.raises(ValueError, match="unknown prediction_type 'x0'"):
        ClassConditionedPrepareBatch(10, null_class=NUM_CLASSES, prediction_type="x0")
    with pytest.raises(ValueError, match="needs the training scheduler"):
        ClassConditionedPrepareBatch(10, null_class=NUM_CLASSES, prediction_type="v_prediction")


def test_prepare_batch_rejects_labels_outside_the_classes() -> None:
    prep = ClassConditionedPrepareBatch(num_train_timesteps=10, null_class=NUM_CLASSES)
    with pytest.raises(ValueError, match="class labels must be in"):
        prep({"image": torch.zeros(2, 1, 4, 8), "label": torch.tensor([0, NUM_CLASSES])})
    with pytest.raises(KeyError, match="label"):
        prep({"image": torch.zeros(2, 1, 4, 8)})


def test_training_with_a_monai_trainer_lowers_the_loss() -> None:
    torch.manual_seed(0)
    net = tiny_unet()
    scheduler = make_scheduler("ddpm", num_train_timesteps=100)
    inferer = ClassConditionedDiffusionInferer(scheduler, null_class=NUM_CLASSES)
    # one fixed batch: each class is a different constant-bright band
    images = torch.full((6, 1, 16, 32), -1.0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for i, c in enumerate(labels):
        images[i, :, 4 * int(c) : 4 * int(c) + 4] = 1.0
    data = [{"image": images, "label": labels}] * 40
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 2e-3),
        loss_function=torch.nn.MSELoss(),
        inferer=inferer,
        prepare_batch=ClassConditionedPrepareBatch(100, null_class=NUM_CLASSES, drop_prob=0.1, seed=0),
        amp=False,
    )
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output[0]["loss"]))
    trainer.run()
    assert trainer.state.iteration == 40
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:5]) / 5


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_same_seed_same_image_whatever_the_batch(sampler: str) -> None:
    net = tiny_unet(random_output=True).eval()
    inferer = ClassConditionedDiffusionInferer(make_scheduler("ddpm", 20), null_class=NUM_CLASSES)
    steps = 20 if sampler == "ddpm" else 5

    def draw(seeds: list[int], labels: list[int], w: float = 1.0) -> torch.Tensor:
        noise, gens = seeded_noise(seeds, (1, 8, 16))
        sched = make_scheduler(sampler, 20)
        return inferer.sample(
            noise,
            net,
            labels,
            scheduler=sched,
            num_inference_steps=steps,
            generators=gens,
            guidance_scale=w,
            verbose=False,
        )

    alone = draw([7], [1])
    in_batch = draw([3, 7, 9], [0, 1, 2])
    torch.testing.assert_close(alone[0], in_batch[1], atol=sampling_atol(steps), rtol=0)  # other kernels, same image
    assert not torch.allclose(in_batch[0], in_batch[1])
    assert torch.isfinite(in_batch).all()
    # the class steers the image: same seed, another class, another image
    assert not torch.allclose(draw([7], [1])[0], draw([7], [2])[0])
    # guidance changes the image (the null-class pass is used) and is deterministic too
    guided = draw([7], [1], w=3.0)
    assert not torch.allclose(guided, alone)
    assert torch.allclose(guided, draw([7], [1], w=3.0))


def test_guidance_formula_and_its_errors() -> None:
    class Probe(torch.nn.Module):
        """A 'network' whose prediction is its class label, to check the guidance arithmetic."""

        def forward(self, x, timesteps, class_labels):
            return class_labels.float().view(-1, 1, 1, 1).expand_as(x)

    inferer = ClassConditionedDiffusionInferer(make_scheduler("ddim", 10), null_class=3)
    x = torch.zeros(2, 1, 2, 2)
    out = inferer.predict(Probe(), x, 5, torch.tensor([1, 2]), guidance_scale=2.0)
    # eps = null + w (cond - null) = 3 + 2 (c - 3)
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match="class labels for a batch"):
        inferer.sample(torch.zeros(2, 1, 2, 2), Probe(), [1], verbose=False)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("euler")
