-- wrk script for benches/compare/instructions.sh: stop after a number of
-- responses. Arguments (after `--`): COUNT FLAG_FILE. The thread stops once
-- COUNT responses are in and creates FLAG_FILE; the script then sends wrk
-- SIGINT, which ends its wait for -d and prints the summary. A few more
-- responses than COUNT may be counted: those read in the same event-loop
-- turn. The requests wrk sends are the same as without a script.
local left, flag

function init(args)
    left = tonumber(args[1])
    flag = args[2]
end

function response()
    left = left - 1
    if left == 0 then
        wrk.thread:stop()
        io.open(flag, "w"):close()
    end
end
