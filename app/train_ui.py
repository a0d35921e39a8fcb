"""The Train tab's "build your own foundation" section (issue 11): pretrain a zoo architecture on mnist5k with a
chosen optimizer, SAM ρ and train-time transform, then fine-tune an AdamW / CrAFT pair from it and open the pair
in Explore. Layout and wiring only; the handlers are :class:`~craftlab_app.train_callbacks.TrainCallbacks`'.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

__all__ = ["TRANSFORM_CHOICES", "pretrain_section"]

TRANSFORM_CHOICES = [("none", "none"), ("expand (ExpandNets-style factors)", "expand"),
                     ("repvgg (RepVGG-style branches; CNNs)", "repvgg"), ("weight-noise", "weight-noise")]
"""Train-time transforms offered (``craftlab.transforms``); each folds back into the plain architecture."""

INTRO = ("### Build your own foundation\nPretrain a zoo architecture on **mnist5k** (the source task) with a chosen "
         "optimizer, SAM radius and train-time transformation (folded away after training, SNT's idea), then "
         "fine-tune an AdamW run and its CrAFT twin from it on a target task: the pair opens in **Explore** like "
         "any model. Runs are cached and train one at a time.")


def pretrain_section(cb: Any, explore_model: Any, tabs: Any, datasets: list[str]) -> None:
    """Build the section in the current Blocks context and wire it: `explore_model` is Explore's model picker
    (the fine-tuned pair is picked there), `tabs` the page's tabs (``Open in Explore``)."""
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            p_model = gr.Dropdown(["vit-tiny", "resnet-tiny"], value="resnet-tiny", label="architecture",
                                  elem_id="p-model")
            p_opt = gr.Radio(["adam", "adamw", "sgd"], value="adam", label="pretraining optimizer", elem_id="p-opt")
            p_rho = gr.Number(0.0, label="SAM ρ during pretraining (0 = no SAM)", elem_id="p-rho")
            p_transform = gr.Dropdown(TRANSFORM_CHOICES, value="none", label="train-time transform",
                                      allow_custom_value=True, elem_id="p-transform",
                                      info="or a spec such as expand:rate=4")
            p_epochs = gr.Number(2, label="pretraining epochs (empty = the zoo's recipe)", precision=0,
                                 elem_id="p-epochs")
            p_seed = gr.Number(0, label="seed", precision=0, elem_id="p-seed")
            p_check = gr.Markdown(elem_id="pretrain-check")
            p_go = gr.Button("Pretrain", variant="primary", elem_id="pretrain-button")
        with gr.Column(scale=3):
            p_status = gr.Markdown(elem_id="pretrain-status")
            p_plot = gr.Plot(label="pretraining loss per epoch", elem_id="pretrain-plot")
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            f_source = gr.Dropdown([], label="pretrained run to fine-tune from", elem_id="f-source",
                                   allow_custom_value=True)
            f_data = gr.Dropdown(datasets, value="digits", label="fine-tune on (target task)", allow_custom_value=True,
                                 elem_id="f-data")
            f_epochs = gr.Number(3, label="fine-tuning epochs", precision=0, elem_id="f-epochs")
            f_seed = gr.Number(0, label="seed", precision=0, elem_id="f-seed")
            f_rho = gr.Number(0.05, label="SAM ρ of the CrAFT arm (> 0)", elem_id="f-rho")
            f_go = gr.Button("Fine-tune AdamW + CrAFT from it", variant="primary", elem_id="transfer-button")
        with gr.Column(scale=3):
            f_status = gr.Markdown(elem_id="transfer-status")
            f_open = gr.Button("Open in Explore", visible=False, elem_id="transfer-open")
            f_plot = gr.Plot(label="fine-tuning loss per epoch", elem_id="transfer-plot")

    p_inputs = [p_model, p_opt, p_rho, p_transform, p_epochs, p_seed]
    gr.on([x.change for x in p_inputs], cb.pretrain_check, inputs=p_inputs, outputs=p_check, api_name="pretrain_check",
          queue=False, show_progress="hidden", preprocess=False)
    p_go.click(cb.pretrain, inputs=p_inputs, outputs=[p_status, p_plot, f_source], api_name="pretrain",
               concurrency_limit=1, concurrency_id="train", preprocess=False, trigger_mode="multiple")
    f_go.click(cb.transfer, inputs=[f_source, f_data, f_epochs, f_seed, f_rho],
               outputs=[f_status, f_plot, explore_model, f_open], api_name="transfer", concurrency_limit=1,
               concurrency_id="train", preprocess=False, trigger_mode="multiple")
    f_open.click(lambda: gr.Tabs(selected="explore"), outputs=tabs, api_name="open_transfer_in_explore", queue=False)
    gr.on([tabs.change], cb.pretrain_list, inputs=f_source, outputs=f_source, api_name="pretrained_runs",
          queue=False, show_progress="hidden")
