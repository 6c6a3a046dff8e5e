"""Replica of Unlearnable-Examples' ``toolbox.PerturbationTool`` (and APBench's em_utils.py /
rem_utils.py copies), written from reading it: the noise state is the image x + δ; each step
moves the image against (min-min) or along (min-max) the gradient's sign, clamps the image
minus the clean batch to ±ε, rebuilds the image and clamps it to [0, 1]; it returns the image
and the noise *before* that box, which the loop stores. New tensors at every step, as there."""

import torch


class PerturbationTool:
    def __init__(self, seed=0, epsilon=0.03137254901, num_steps=20, step_size=0.00784313725):
        self.epsilon = epsilon
        self.num_steps = num_steps
        self.step_size = step_size
        self.seed = seed

    def random_noise(self, noise_shape=(10, 3, 32, 32)):
        return torch.empty(noise_shape).uniform_(-self.epsilon, self.epsilon)

    def _attack(self, images, labels, model, optimizer, criterion, random_noise, direction, classify):
        if random_noise is None:
            random_noise = torch.empty(images.shape).uniform_(-self.epsilon, self.epsilon).to(images.device)
        perturb_img = (images.data + random_noise).clone().requires_grad_(True)
        perturb_img = torch.clamp(perturb_img, 0, 1).detach().requires_grad_(True)
        eta = random_noise
        for _ in range(self.num_steps):
            opt = torch.optim.SGD([perturb_img], lr=1e-3)  # only used to clear the image's gradient
            opt.zero_grad()
            model.zero_grad()
            if isinstance(criterion, torch.nn.CrossEntropyLoss):
                if classify and hasattr(model, "classify"):
                    model.classify = True
                logits = model(perturb_img)
                loss = criterion(logits, labels)
            else:
                logits, loss = criterion(model, perturb_img, labels, optimizer)
            loss.backward()
            eta = self.step_size * perturb_img.grad.data.sign() * direction
            perturb_img = (perturb_img.data + eta).requires_grad_(True)
            eta = torch.clamp(perturb_img.data - images.data, -self.epsilon, self.epsilon)
            perturb_img = (images.data + eta).requires_grad_(True)
            perturb_img = torch.clamp(perturb_img, 0, 1).detach().requires_grad_(True)
        return perturb_img, eta

    def min_min_attack(self, images, labels, model, optimizer, criterion, random_noise=None, sample_wise=False):
        return self._attack(images, labels, model, optimizer, criterion, random_noise, -1, True)

    def min_max_attack(self, images, labels, model, optimizer, criterion, random_noise=None, sample_wise=False):
        return self._attack(images, labels, model, optimizer, criterion, random_noise, 1, False)
