"""Use the plugin: build, plan, freeze, train a few steps, save, load. Run it after installing."""

import torch
import zoo

BACKBONE, POLICY = "example:tinynet-s", "example:top-half"

print(zoo.list_backbones("example:*"), zoo.list_policies("example:*"))
model = zoo.create(BACKBONE, num_classes=2)
print(zoo.plan(model, POLICY).summary())  # the dry run: what would train

plan = zoo.freeze(model, POLICY)  # sets requires_grad and the norm modes
optimizer = torch.optim.AdamW(plan.param_groups(model, lr=1e-3, weight_decay=0.01))
model.train()
for _ in range(3):
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8,))
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

path = zoo.save(model, "tiny-demo", classes=["cat", "dog"], overwrite=True)
loaded = zoo.load("tiny-demo")
x = torch.randn(2, 3, 32, 32)
assert torch.allclose(loaded(x), model.eval()(x))
print(f"saved {path}; classes {loaded.zoo.classes}; policy {loaded.zoo.plan.policy}")
