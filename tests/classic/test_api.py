"""kdistill.distill works on the user's own modules, addressed by their own layer names."""

import torch
from torch import nn

import kdistill
from kdistill.evaluation import agreement


class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(10, 64), nn.Tanh())
        self.classifier = nn.Linear(64, 3)

    def forward(self, x):
        return self.classifier(self.encoder(x))


def test_distill_custom_modules_with_a_feature_term():
    torch.manual_seed(0)
    teacher = Teacher()
    x = torch.randn(256, 10)
    with torch.no_grad():
        y = teacher(x).argmax(-1)
    torch.manual_seed(1)
    student = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    before = agreement(student(x), teacher(x))
    target = torch.full_like(y, -1)  # no labels at all: the teacher is the only source
    trained, history = kdistill.distill(
        teacher,
        student,
        x,
        target,
        loss=[
            {"name": "hinton_kd", "params": {"temperature": 2.0}},
            {"name": "fitnet_hint", "weight": 0.1, "student_layer": "1", "teacher_layer": "encoder"},
        ],
        train_config={"steps": 300, "batch_size": 64, "lr": 0.01, "eval_every": 100},
    )
    assert trained is student and not student.training
    with torch.no_grad():
        after = agreement(student(x), teacher(x))
    assert after > 0.9 and after > before + 0.2
    assert set(history[-1]["terms"]) == {"kd/hinton_kd", "feat/fitnet_hint@1"}
    assert history[-1]["loss"] < history[0]["loss"]
