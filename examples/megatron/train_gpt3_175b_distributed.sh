#!/bin/bash
# Megatron-LM's examples/gpt3/train_gpt3_175b_distributed.sh (commit d98e8a64ddf3), scaled down to run on
# one CPU in seconds with megalite's pretrain_gpt.py. Every flag is kept; changed are only
#   sizes:      --num-layers 96 -> 2, --hidden-size 12288 -> 32, --num-attention-heads 96 -> 4,
#               --seq-length / --max-position-embeddings 2048 -> 32, --global-batch-size 1536 -> 4,
#               --step-batch-size-schedule thresholds and sizes -> "0:2 64:4" (tokens: 2 until 2 samples),
#   parallel:   GPUS_PER_NODE 8 -> 1, --tensor-model-parallel-size 8 -> 1, --pipeline-model-parallel-size 16 -> 1,
#               MASTER_PORT may come from the environment (tests run side by side),
#   iterations: --train-iters 500000 -> 2, --lr-decay-iters 430000 -> 2, --log-interval 100 -> 1,
#               --save-interval 10000 -> 2, --eval-interval 1000 -> 2, --eval-iters 10 -> 1.
# Run it as upstream, from the folder holding pretrain_gpt.py:
#   bash train_gpt3_175b_distributed.sh CHECKPOINT TENSORBOARD VOCAB_FILE MERGE_FILE DATA_PREFIX

# Runs the "175B" parameter model

export CUDA_DEVICE_MAX_CONNECTIONS=1

GPUS_PER_NODE=1
# Change for multinode config
MASTER_ADDR=localhost
MASTER_PORT=${MASTER_PORT:-29500}
NUM_NODES=1
NODE_RANK=0
WORLD_SIZE=$(($GPUS_PER_NODE*$NUM_NODES))

CHECKPOINT_PATH=$1 #<Specify path>
TENSORBOARD_LOGS_PATH=$2 #<Specify path>
VOCAB_FILE=$3 #<Specify path to file>/gpt2-vocab.json
MERGE_FILE=$4 #<Specify path to file>/gpt2-merges.txt
DATA_PATH=$5 #<Specify path and file prefix>_text_document

DISTRIBUTED_ARGS=(
    --nproc_per_node $GPUS_PER_NODE 
    --nnodes $NUM_NODES 
    --master_addr $MASTER_ADDR 
    --master_port $MASTER_PORT
)

GPT_MODEL_ARGS=(
    --num-layers 2 
    --hidden-size 32 
    --num-attention-heads 4 
    --seq-length 32 
    --max-position-embeddings 32 
    --attention-backend auto # Can use (flash/fused/unfused/local)
)

TRAINING_ARGS=(
    --micro-batch-size 1 
    --global-batch-size 4
    --step-batch-size-schedule "0:2 64:4"
    --train-iters 2
    --weight-decay 0.1 
    --adam-beta1 0.9 
    --adam-beta2 0.95 
    --init-method-std 0.006 
    --clip-grad 1.0 
    --fp16
    --lr 6.0e-5 
    --lr-decay-style cosine 
    --min-lr 6.0e-6
    --lr-warmup-fraction .001 
    --lr-decay-iters 2 
)

MODEL_PARALLEL_ARGS=(
	--tensor-model-parallel-size 1 
	--pipeline-model-parallel-size 1 
)

DATA_ARGS=(
    --data-path $DATA_PATH 
    --vocab-file $VOCAB_FILE 
    --merge-file $MERGE_FILE 
    --split 949,50,1
)

EVAL_AND_LOGGING_ARGS=(
    --log-interval 1
    --save-interval 2 
    --eval-interval 2 
    --save $CHECKPOINT_PATH 
    --load $CHECKPOINT_PATH 
    --eval-iters 1
    --tensorboard-dir $TENSORBOARD_LOGS_PATH 
)

torchrun ${DISTRIBUTED_ARGS[@]} pretrain_gpt.py \
    ${GPT_MODEL_ARGS[@]} \
    ${TRAINING_ARGS[@]} \
    ${MODEL_PARALLEL_ARGS[@]} \
    ${DATA_ARGS[@]} \
    ${EVAL_AND_LOGGING_ARGS[@]}
