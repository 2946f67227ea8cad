# perl loop.pl ADDRESS STOP MIN: new clients on ADDRESS one after another
# until the file STOP exists and at least MIN have been tried; prints how
# many were served.
use strict; use warnings;
use IO::Socket::INET;
my ($address, $stop, $min) = @ARGV;
my ($tried, $served) = (0, 0);
while (!-e $stop || $tried < $min) {
    $tried++;
    my $socket = IO::Socket::INET->new(PeerAddr => $address, Timeout => 5)
        or do { print STDERR "client $tried: connect: $!\n"; next };
    syswrite $socket, "c$tried";
    shutdown $socket, 1;
    my $reply = "";
    while (sysread($socket, my $buffer, 65536)) { $reply .= $buffer }
    if ($reply eq "hello from foobar\nc$tried") { $served++ }
    else { print STDERR "client $tried got '$reply'\n" }
}
print "served $served of $tried\n";
