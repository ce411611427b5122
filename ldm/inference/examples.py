"""The original ``gligen_inference.py`` example set: every mode and modality.

Checkpoints are not named here: each example runs with the released Hub checkpoint of the mode it
implies (``checkpoints.RELEASED``), or with the original's local file names under ``--ckpt_dir``.
Input paths are relative to the repository root (``inference_images/``; synthetic stand-ins are
bundled, see :mod:`ldm.inference.standins`).
"""
from __future__ import annotations

PERSON_1 = [[.7598, .2542], [.7431, .2104], [.8118, .2021], [0, 0], [.9514, .1813], [.7806, .2917], [0, 0],
            [.6785, .5125], [0, 0], [.5389, .6479], [.6785, .6750], [.7973, .7042], [0, 0], [.6181, .7375],
            [.9764, .8458], [0, 0], [0, 0]]
PERSON_2 = [[.2681, .4313], [.2514, .3979], [0, 0], [.0785, .3854], [0, 0], [.0910, .5583], [0, 0],
            [.1243, .8479], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [.2410, .8146], [.1202, .6146], [0, 0],
            [.2743, .7188]]

ORIGINAL_EXAMPLES = [
    dict(prompt="a teddy bear sitting next to a bird", phrases=["a teddy bear", "a bird"],
         locations=[[0.0, 0.09, 0.33, 0.76], [0.55, 0.11, 1.0, 0.8]], alpha_type=[0.3, 0.0, 0.7],
         save_folder_name="generation_box_text"),
    dict(input_image="inference_images/dalle2_museum.jpg", prompt="a corgi and a cake", phrases=["corgi", "cake"],
         locations=[[0.25, 0.28, 0.42, 0.52], [0.14, 0.58, 0.58, 0.92]], save_folder_name="inpainting_box_text"),
    dict(prompt="an alarm clock sitting on the beach", images=["inference_images/clock.png"],
         phrases=["alarm clock"], locations=[[0.0, 0.09, 0.53, 0.76]], alpha_type=[1.0, 0.0, 0.0],
         save_folder_name="generation_box_image"),
    dict(prompt="a brick house in the woods, anime, oil painting", phrases=["a brick house", "placehoder"],
         images=["inference_images/placeholder.png", "inference_images/style_golden.jpg"],
         locations=[[0.4, 0.2, 1.0, 0.8], [0.0, 1.0, 0.0, 1.0]], alpha_type=[1, 0, 0],
         text_mask=[1, 0], image_mask=[0, 1], save_folder_name="generation_box_text_style"),
    dict(input_image="inference_images/beach.jpg", prompt="a bigben on the beach",
         images=["inference_images/bigben.jpg"], locations=[[0.18, 0.08, 0.62, 0.75]],
         save_folder_name="inpainting_box_image"),
    dict(prompt="a man is eating breakfast", hed_image="inference_images/hed_man_eat.png",
         alpha_type=[0.9, 0, 0.1], save_folder_name="hed"),
    dict(prompt="A Humanoid Robot Designed for Companionship", canny_image="inference_images/canny_robot.png",
         alpha_type=[0.9, 0, 0.1], save_folder_name="canny"),
    dict(prompt="a large tree with no leaves in front of a building",
         normal="inference_images/normal_tree_building.jpg", alpha_type=[0.7, 0, 0.3], save_folder_name="normal"),
    dict(prompt="a Vibrant colorful Bird Sitting on Tree Branch", depth="inference_images/depth_bird.png",
         alpha_type=[0.7, 0, 0.3], save_folder_name="depth"),
    dict(prompt="a living room filled with lots of furniture and plants",
         sem="inference_images/sem_ade_living_room.png", alpha_type=[0.7, 0, 0.3], save_folder_name="sem"),
    dict(prompt="A young man and a small boy are talking", locations=[PERSON_1, PERSON_2],
         alpha_type=[0.3, 0, 0.7], save_folder_name="keypoint"),
]
