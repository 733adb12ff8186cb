# Does emphasising high t move position words? Fine-tune the shipped base briefly on fresh scenes,
# t uniform over [lo, 1000), and score position on validation seeds 60-65 (never the bench's).
import copy, sys, time, numpy as np, torch, torch.nn.functional as F
from sdxl_edu import load_pipeline
from sdxl_edu.nano import WEIGHTS, EVALUATOR_FILE, NANO_SCHEDULER
from sdxl_edu.nano.classifiers import load_evaluator
from sdxl_edu.nano.bench import phrase, generate, has, ONE
from sdxl_edu.nano.data import SHAPES, PHRASES
from sdxl_edu.nano.scene_reading import read_objects
from sdxl_edu.nano.scenes import BUCKETS, make_scene
from sdxl_edu.nano.batches import captions_for, frozen_text_embeddings, micro_ids, to_images
from sdxl_edu.model.conditioning import vector_y
from sdxl_edu.sampling.schedule import NoiseSchedule

torch.set_num_threads(2)
lo, steps = int(sys.argv[1]), int(sys.argv[2])
pipe = load_pipeline()
ev = load_evaluator(WEIGHTS / EVALUATOR_FILE.name)
schedule = NoiseSchedule.from_config(NANO_SCHEDULER)
encode = frozen_text_embeddings(pipe.text_encoder, pipe.text_encoder_2)
unet = pipe.unet.float().train().requires_grad_(True)
opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=0.01)
rng = np.random.default_rng(123)
trng = np.random.default_rng(456)
start = time.time()
for step in range(steps):
    scenes = [make_scene(rng, BUCKETS[0]) for _ in range(32)]
    with torch.no_grad():
        x0 = pipe.vae.encode(to_images(np.stack([s.image for s in scenes]))).mean * pipe.vae.scaling_factor
    d = {
        "original_size": np.array([s.original_size for s in scenes]),
        "crop_top_left": np.array([s.crop_top_left for s in scenes]),
    }
    captions, dropped = captions_for(rng, np.stack([s.labels for s in scenes]), 0.1)
    context, pooled = encode(captions)
    keep = torch.from_numpy(~dropped).float()
    context, pooled = context * keep[:, None, None], pooled * keep[:, None]
    y = vector_y(pooled, micro_ids(d, np.arange(32), target_size=BUCKETS[0]))
    t = torch.from_numpy(trng.integers(lo, 1000, 32))
    eps = torch.from_numpy(trng.standard_normal(x0.shape).astype(np.float32))
    loss = F.mse_loss(unet(schedule.q_sample(x0, t, eps), t, context, y), schedule.training_target(x0, t, eps))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    opt.step()
    if step % 50 == 0:
        print(step, round(loss.item(), 4), round(time.time() - start), flush=True)
unet.eval().requires_grad_(False)
prompts = [(s, p) for s in SHAPES for p in PHRASES]
placed, drawn = [], []
for seed in range(60, 66):
    ims = generate(pipe, [phrase(s, position=p) for s, p in prompts], seed)
    placed += [has(o, s, position=p) is not None for (s, p), o in zip(prompts, read_objects(ev, ims))]
    ims = generate(pipe, [phrase(s, c) for s, c in ONE], seed)
    drawn += [has(o, s, c) is not None for (s, c), o in zip(ONE, read_objects(ev, ims))]
print(
    f"lo={lo} steps={steps}: position {np.mean(placed):.3f} of {len(placed)}, shape+colour {np.mean(drawn):.3f}",
    flush=True,
)
