"""Adam with the gradients clipped by their global norm first (torch.optim.Adam after
torch.nn.utils.clip_grad_norm_ over the parameter group).

Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization"; clipping by the global norm:
Pascanu, Mikolov & Bengio (2013), "On the difficulty of training recurrent neural networks".

torch's code (followed here; states ``mean`` = m, ``var`` = v):
    c = min(1, max_norm / (||g||_group + 1e-6))     # ||g||_group: over every gradient of the group
    G = c g + wd w                                  # L2 weight decay, after the clip
    m = beta1 m + (1 - beta1) G;  v = beta2 v + (1 - beta2) G^2
    w = w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + epsilon)

torch adds the norm in float32 (a norm of per-tensor norms) and updates the moments by lerp; optgen
adds the squares in float64 in a fixed order and writes the moments as above: equal up to
rounding. The norm is a group reduction: the torch class computes it over each parameter group,
the modules' ``step_multi`` over the tensors of the call (``step``: the one tensor).
"""

import sympy as sp

from codegen.clipping import global_norm_clip
from codegen.spec import Rule, nonnegative, positive, unit

RULE = Rule("adam_clip", __doc__, class_name="AdamClip")
lr = RULE.hyper("lr", 0.001, nonnegative(), doc="learning rate")
max_norm = RULE.hyper("max_norm", 1.0, positive(), doc="largest global gradient norm")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the second moment")
epsilon = RULE.hyper("epsilon", 1e-8, positive(), doc="added to the corrected sqrt(v)")
wd = RULE.hyper("wd", 0.0, nonnegative(), doc="L2 weight decay, added to the clipped gradient")
w, g, t = RULE.weight, RULE.grad, RULE.t
mean = RULE.state("mean", 0, doc="first moment m")
var = RULE.state("var", 0, doc="second moment v")

G = RULE.let("G", global_norm_clip(RULE, g, max_norm) + wd * w)
mean_new = RULE.update(mean, beta1 * mean + (1 - beta1) * G)
var_new = RULE.update(var, beta2 * var + (1 - beta2) * G**2)
denom = RULE.let("denom", sp.sqrt(var_new) / sp.sqrt(1 - beta2**t) + epsilon)
RULE.update(w, w - lr / (1 - beta1**t) * mean_new / denom)
