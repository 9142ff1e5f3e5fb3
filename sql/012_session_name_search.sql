-- Search by name: GET /api/llm/sessions?q=text is a case-insensitive substring
-- match (session_name ILIKE '%text%', wildcards in the text escaped), served by
-- a trigram index so a page stays fast however many sessions a user has.
--
-- pg_trgm goes into schema `extensions`, as Supabase installs every extension
-- (its dashboard does the same): its ~40 functions then stay out of `public`,
-- which Supabase's Data API exposes as RPC to the anon and authenticated roles.
-- On other PostgreSQL servers the schema is created, for the same layout. If
-- pg_trgm is already installed (in any schema), that one is used. The index
-- names the operator class with its schema, so nothing depends on search_path;
-- ILIKE itself is built in, so queries need no qualification either.
--
-- Where btree_gin is there too (Supabase has it; so do PostgreSQL's contrib
-- packages), the index leads with user_id: a search reads only the caller's
-- rows out of the index, not every user's that share a trigram (a rare phrase
-- at 100,000 sessions of one user among 500,000: 30 -> 7-16 ms, measured with
-- bench/search_timing.py).
--
-- Where pg_trgm is not available at all (the embedded PostgreSQL used for
-- development ships without contrib), search still works, answered without
-- the index; run this file's block again on a server that has it.
do $$
declare
    ext text;
    trgm_schema text;
    gin_schema text;
begin
    if not exists (select 1 from pg_available_extensions where name = 'pg_trgm') then
        raise notice 'pg_trgm is not available on this server: session search runs without its index';
        return;
    end if;
    -- Each into `extensions` unless it is installed already (that one is used), btree_gin only if available.
    foreach ext in array array['pg_trgm', 'btree_gin'] loop
        if exists (select 1 from pg_available_extensions where name = ext)
           and not exists (select 1 from pg_extension where extname = ext) then
            create schema if not exists extensions;
            execute format('create extension %I with schema extensions', ext);
        end if;
    end loop;
    select max(n.nspname) filter (where e.extname = 'pg_trgm'), max(n.nspname) filter (where e.extname = 'btree_gin')
      into trgm_schema, gin_schema
      from pg_extension e join pg_namespace n on n.oid = e.extnamespace;
    if gin_schema is not null then
        execute format(
            'create index if not exists chat_sessions_name_trgm_idx on public.chat_sessions '
            'using gin (user_id %I.text_ops, session_name %I.gin_trgm_ops)', gin_schema, trgm_schema);
    else
        execute format(
            'create index if not exists chat_sessions_name_trgm_idx on public.chat_sessions '
            'using gin (session_name %I.gin_trgm_ops)', trgm_schema);
    end if;
end;
$$;
