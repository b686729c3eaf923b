// mtp-ref cross-check driver for llama.cpp (built by benchmarks/crosscheck_llamacpp.py; not part of the engine).
//
// Greedy decoding of given prompt token ids with llama.cpp's own code paths, printing JSON lines on stdout:
//   XC_MODE=plain: one prompt batch, then one token per llama_process; prints {"plain": [ids]}.
//   XC_MODE=mtp:   llama.cpp's MTP drafter (common/speculative.cpp, spec type draft-mtp), driven the way its
//                  examples/speculative-simple drives it: the prompt minus its last token goes to the target,
//                  every round verifies [id_last, d_1 .. d_k] in one batch. Prints one {"round": ...} per verify
//                  (pos0, id_last, the draft, the target argmax of every row, accepted) and {"mtp": [ids]}.
// Prompt ids come from XC_PROMPT_IDS ("1,2,3"); every other option is llama.cpp's (-m, -n, -c, -t,
// --spec-type draft-mtp, --spec-draft-n-max K), parsed by its common_params_parse.
// Acceptance is the greedy rule written out (argmax per row), not a sampler, so nothing random is involved.

#include "arg.h"
#include "common.h"
#include "llama.h"
#include "log.h"
#include "speculative.h"

#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

static llama_token argmax_row(llama_context * ctx, int32_t i, int32_t n_vocab) {
    const float * z = llama_get_logits_ith(ctx, i);
    int32_t best = 0;
    for (int32_t v = 1; v < n_vocab; ++v) {
        if (z[v] > z[best]) {
            best = v;
        }
    }
    return best;
}

static std::string json_ids(const std::vector<llama_token> & v) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < v.size(); ++i) {
        s << (i ? "," : "") << v[i];
    }
    s << "]";
    return s.str();
}

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    common_params params;
    common_init();
    if (!common_params_parse(argc, argv, params, LLAMA_EXAMPLE_SPECULATIVE)) {
        return 1;
    }
    const char * ids_env = std::getenv("XC_PROMPT_IDS");
    const char * mode_env = std::getenv("XC_MODE");
    if (ids_env == nullptr || mode_env == nullptr) {
        std::fprintf(stderr, "error: set XC_PROMPT_IDS=1,2,3 and XC_MODE=plain|mtp\n");
        return 2;
    }
    const std::string mode = mode_env;
    std::vector<llama_token> inp;
    {
        std::stringstream ss(ids_env);
        std::string tok;
        while (std::getline(ss, tok, ',')) {
            inp.push_back((llama_token) std::stol(tok));
        }
    }
    if (inp.size() < 2) {
        std::fprintf(stderr, "error: XC_PROMPT_IDS needs at least 2 ids\n");
        return 2;
    }
    const int n_predict = params.n_predict;

    const auto limits = common_speculative_get_output_limits(params.n_batch, params.n_parallel,
                                                             common_speculative_n_max(&params.speculative));
    params.n_outputs_max = limits.total;
    params.n_outputs_max_per_seq = limits.per_seq;

    llama_backend_init();
    auto init_tgt = common_init_from_params(params);
    llama_model * model = init_tgt->model();
    llama_context * ctx_tgt = init_tgt->context();
    if (model == nullptr || ctx_tgt == nullptr) {
        std::fprintf(stderr, "error: llama.cpp could not load %s (see its log above)\n", params.model.path.c_str());
        return 2;
    }
    const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    const llama_seq_id seq = 0;
    std::vector<llama_token> out;

    if (mode == "plain") {
        common_batch batch(ctx_tgt);
        for (size_t i = 0; i < inp.size(); ++i) {
            batch.add(inp[i], (llama_pos) i, seq, i + 1 == inp.size());
        }
        if (llama_process(ctx_tgt, LLAMA_PROCESS_TYPE_DECODE, batch.get()) != 0) {
            return 3;
        }
        llama_token tok = argmax_row(ctx_tgt, (int32_t) inp.size() - 1, n_vocab);
        llama_pos n_past = (llama_pos) inp.size();
        out.push_back(tok);
        while ((int) out.size() < n_predict) {
            batch.clear();
            batch.add(tok, n_past++, seq, true);
            if (llama_process(ctx_tgt, LLAMA_PROCESS_TYPE_DECODE, batch.get()) != 0) {
                return 3;
            }
            tok = argmax_row(ctx_tgt, 0, n_vocab);
            out.push_back(tok);
        }
        std::printf("{\"plain\": %s}\n", json_ids(out).c_str());
        llama_backend_free();
        return 0;
    }

    // ---- MTP: the drafter's context is created against the target model (draft-mtp)
    common_speculative_init_result_ptr spec_init;
    {
        common_params params_dft = common_base_params_to_speculative(params);
        spec_init = common_speculative_init_from_params(params_dft, model, ctx_tgt);
        params.speculative.draft.ctx_tgt = ctx_tgt;
        params.speculative.draft.ctx_dft = spec_init->context();
    }
    llama_context * ctx_dft = params.speculative.draft.ctx_dft;
    if (ctx_dft == nullptr) {
        std::fprintf(stderr, "error: no MTP draft context (is --spec-type draft-mtp given, does the GGUF hold nextn layers?)\n");
        return 2;
    }
    const bool ckpt_tgt = common_context_can_seq_rm(ctx_tgt) == COMMON_CONTEXT_SEQ_RM_TYPE_FULL;
    const bool ckpt_dft = common_context_can_seq_rm(ctx_dft) == COMMON_CONTEXT_SEQ_RM_TYPE_FULL;
    common_speculative * spec = common_speculative_init(params.speculative, 1);
    if (spec == nullptr) {
        return 3;
    }
    std::printf("{\"info\": {\"n_layer_nextn\": %d, \"checkpoint_target\": %s, \"checkpoint_draft\": %s}}\n",
                (int) llama_model_n_layer_nextn(model), ckpt_tgt ? "true" : "false", ckpt_dft ? "true" : "false");

    // the prompt minus its last token: the drafter pairs every row with the target's hidden one position back
    {
        common_batch batch_prompt(ctx_tgt);
        for (size_t i = 0; i + 1 < inp.size(); ++i) {
            batch_prompt.add(inp[i], (llama_pos) i, seq, false);
        }
        llama_process(ctx_tgt, LLAMA_PROCESS_TYPE_DECODE, batch_prompt.get());
        if (!common_speculative_process(spec, batch_prompt)) {
            return 3;
        }
    }
    llama_token id_last = inp.back();
    llama_tokens prompt_tgt(inp.begin(), inp.end() - 1);
    llama_pos n_past = (llama_pos) inp.size() - 1;
    common_speculative_begin(spec, seq, prompt_tgt);

    common_batch batch_tgt(ctx_tgt);
    llama_tokens draft;
    common_prompt_checkpoint ckpt;
    bool redo = false;  // re-verifying the kept tokens after a checkpoint restore (no new draft)

    while ((int) out.size() < n_predict) {
        if (draft.empty()) {
            ckpt.update_pos(prompt_tgt.size(), llama_memory_seq_pos_min(llama_get_memory(ctx_tgt), seq),
                            llama_memory_seq_pos_max(llama_get_memory(ctx_tgt), seq));
            if (ckpt_dft) {
                ckpt.update_dft(ctx_dft, seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
            }
            int n_draft_max = std::max(0, std::min((int) llama_n_ctx(ctx_tgt) - (int) n_past - 2,
                                                   n_predict - (int) out.size() - 1));
            common_speculative_get_draft_params(spec, seq) = {true, n_draft_max, n_past, id_last, &prompt_tgt, &draft};
            common_speculative_draft(spec);
            if (!draft.empty() && ckpt_tgt) {
                ckpt.update_tgt(ctx_tgt, seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
            }
            if (ckpt_dft) {
                ckpt.load_dft(ctx_dft, seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
            }
            llama_memory_seq_rm(llama_get_memory(ctx_dft), seq, ckpt.pos_max + 1, -1);
            redo = false;
        }
        const llama_pos pos0 = n_past;
        batch_tgt.clear();
        batch_tgt.add(id_last, n_past++, seq, true);
        for (size_t i = 0; i < draft.size(); ++i) {
            batch_tgt.add(draft[i], n_past + (llama_pos) i, seq, true);
        }
        llama_process(ctx_tgt, LLAMA_PROCESS_TYPE_DECODE, batch_tgt.get());
        if (!common_speculative_process(spec, batch_tgt)) {
            return 3;
        }
        // greedy acceptance, written out: row i's argmax must equal draft[i]
        std::vector<llama_token> target, ids;
        for (size_t i = 0; i <= draft.size(); ++i) {
            target.push_back(argmax_row(ctx_tgt, (int32_t) i, n_vocab));
        }
        for (size_t i = 0; i <= draft.size(); ++i) {
            ids.push_back(target[i]);
            if (i == draft.size() || target[i] != draft[i]) {
                break;
            }
        }
        const size_t n_draft = draft.size();
        std::printf("{\"round\": {\"pos0\": %d, \"id_last\": %d, \"draft\": %s, \"target\": %s, \"accepted\": %zu, \"redo\": %s}}\n",
                    (int) pos0, (int) id_last, json_ids(draft).c_str(), json_ids(target).c_str(), ids.size() - 1,
                    redo ? "true" : "false");
        if (ckpt_tgt && ids.size() - 1 < n_draft) {
            // a recurrent target cannot drop rows: restore, then verify the kept tokens again (speculative-simple's way)
            draft = ids;
            ckpt.load_tgt(ctx_tgt, seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
            llama_memory_seq_rm(llama_get_memory(ctx_tgt), seq, ckpt.pos_max + 1, -1);
            ckpt.load_dft(ctx_dft, seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
            llama_memory_seq_rm(llama_get_memory(ctx_dft), seq, ckpt.pos_max + 1, -1);
            prompt_tgt.resize(ckpt.n_tokens);
            n_past = (llama_pos) prompt_tgt.size();
            redo = true;
            continue;
        }
        common_speculative_accept(spec, seq, (uint16_t) (ids.size() - 1));
        n_past += (llama_pos) ids.size() - 1;
        for (llama_token t : ids) {
            prompt_tgt.push_back(id_last);
            id_last = t;
            out.push_back(t);
        }
        draft.clear();
        llama_memory_seq_rm(llama_get_memory(ctx_tgt), seq, n_past, -1);
        llama_memory_seq_rm(llama_get_memory(ctx_dft), seq, n_past, -1);
    }
    if ((int) out.size() > n_predict) {
        out.resize(n_predict);
    }
    std::printf("{\"mtp\": %s}\n", json_ids(out).c_str());
    common_speculative_free(spec);
    llama_backend_free();
    return 0;
}
