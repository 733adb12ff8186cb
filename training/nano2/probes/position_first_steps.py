# Where the first steps put the object: x0_hat at steps 0, 1, 3 and 6 for "a circle <position>", the mean
# over 8 noises of seed 70 decoded, its centroid printed and the means saved as a grid.
import numpy as np, torch
from PIL import Image
from sdxl_edu import load_pipeline
from sdxl_edu.nano.bench import phrase
from sdxl_edu.nano.data import PHRASES

torch.set_num_threads(2)
pipe = load_pipeline()
rows = []
for i_keep in (0, 1, 3, 6):
    row = []
    for p in PHRASES:
        keep = {}

        def cb(step):
            if step.i == i_keep:
                keep["x0"] = step.x0.clone()

        out = pipe([phrase("circle", position=p)] * 8, seed=70, num_inference_steps=20, progress=False, callback=cb)
        x0 = keep["x0"]
        with torch.no_grad():
            im = (
                pipe.vae.float()
                .decode(x0.float() / pipe.vae.scaling_factor if hasattr(pipe.vae, "scaling_factor") else x0)
                .clamp(-1, 1)
            )
        dev = (im - im.mean(dim=(2, 3), keepdim=True)).abs().mean(1)  # object-ness
        m = dev.mean(0).numpy()
        ys, xs = np.indices(m.shape)
        w = m / m.sum()
        print(
            i_keep,
            p,
            "centroid y %.2f x %.2f" % ((w * ys).sum() / 128, (w * xs).sum() / 128),
            "spread",
            m.std().round(4),
        )
        row.append((im.mean(0).permute(1, 2, 0).numpy() + 1) * 127.5)
    rows.append(np.concatenate(row, 1))
Image.fromarray(np.concatenate(rows, 0).clip(0, 255).astype(np.uint8)).save(
    "training/nano2/probes/position_first_steps.png"
)
